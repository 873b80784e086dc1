//! The policy decision with 10,000 rules: exact names, `*.suffix` globs, inner globs and CIDRs; and the agent-action
//! decision with a realistic policy of about 20 rules, for a file action and a compound shell command.
//!
//! `cargo bench --bench policy`. The target is ≤ 1 µs per destination decision at 10,000 rules.

use std::collections::BTreeMap;
use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};

use tollgate::actions::rules::{ActionPolicy, GlobalActions, Lists, Mode, TeamActions, Verdict as ActionVerdict};
use tollgate::actions::tools::Tools;

use tollgate::config::file::{Policy as PolicyFile, Verdict};
use tollgate::policy::Policy;
use tollgate::target::Target;

/// 10,000 rules: 6,000 exact hosts, 2,000 suffix globs, 1,000 inner globs, 1,000 CIDRs; 10% of them deny.
fn ten_thousand_rules() -> Policy {
    let mut allow = Vec::new();
    let mut deny = Vec::new();
    for i in 0..10_000u32 {
        let rule = match i % 10 {
            0..=5 => format!("host{i}.corp{}.example.com", i % 97),
            6 | 7 => format!("*.team{i}.example.net"),
            8 => format!("api-{i}-*.example.org"),
            _ => format!("{}.{}.{}.0/24", 11 + (i % 200), (i / 200) % 250, i % 250),
        };
        if i % 10 == 3 {
            deny.push(rule);
        } else {
            allow.push(rule);
        }
    }
    let file = PolicyFile {
        default: Verdict::Deny,
        private_destinations: Verdict::Deny,
        allow_private: Vec::new(),
        ports: Some(vec![443, 80]),
        deny,
        allow,
        require_sni_match: false,
    };
    Policy::compile(&file, &Default::default()).expect("bench rules compile")
}

fn decide(c: &mut Criterion) {
    let policy = ten_thousand_rules();
    let cases = [
        ("exact_hit", "host9990.corp7.example.com:443"),
        ("suffix_hit", "a.b.team9996.example.net:443"),
        ("inner_glob_hit", "api-9998-eu.example.org:443"),
        ("cidr_hit", "18.49.249.7:443"),
        ("miss_default_deny", "nothing.example.io:443"),
        ("deny_hit", "host9993.corp43.example.com:443"),
    ];
    let now = std::time::SystemTime::now();
    let mut group = c.benchmark_group("policy_decide_10k_rules");
    for (name, authority) in cases {
        let target = Target::parse_authority(authority).expect("bench target parses");
        group.bench_function(name, |b| b.iter(|| policy.decide(black_box(&target), &[], now)));
    }
    group.finish();
    c.bench_function("target_parse_and_decide", |b| {
        b.iter(|| {
            let target = Target::parse_authority(black_box("Host9990.CORP7.example.com.:443")).expect("parses");
            policy.decide(&target, &[], now)
        })
    });
}

/// A policy an organisation might write: 13 global rules, 7 for a team.
fn action_policy() -> ActionPolicy {
    let strings = |patterns: &[&str]| patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    let deny = strings(&[
        "file:read:/etc/passwd",
        "file:read:/etc/shadow",
        "file:*:**/secrets/**",
        "file:*:**/.ssh/**",
        "file:write:/repos/trading/main/**",
        "bash:run:curl http://*",
        "bash:run:wget *",
        "bash:run:rm -rf /*",
        "web:fetch:*.internal.example.com",
        "mcp:call:prod-db/*",
    ]);
    let alert = strings(&["file:read:**/.env", "bash:run:kubectl *", "bash:run:terraform *"]);
    let global = GlobalActions {
        mode: Mode::Enforce,
        default: ActionVerdict::Allow,
        lists: Lists::compile("actions", &deny, &[], &alert).expect("bench patterns compile"),
    };
    let team = TeamActions {
        mode: None,
        lists: Lists::compile(
            "teams.backend.actions",
            &strings(&["mcp:call:jira/delete_*", "bash:run:docker push *"]),
            &strings(&["bash:run:cargo *", "bash:run:git *"]),
            &strings(&["web:fetch"]),
        )
        .expect("bench patterns compile"),
        readonly: false,
        blocked_files: TeamActions::blocked_files(
            "teams.backend.blocked_file_patterns",
            &strings(&["**/*.pem", "**/*.key"]),
        )
        .expect("bench patterns compile"),
    };
    ActionPolicy::new(global, BTreeMap::from([(Arc::from("backend"), team)]))
}

fn decide_actions(c: &mut Criterion) {
    let policy = action_policy();
    let tools = Tools::default();
    let teams = [Arc::from("backend")];
    let cases = [
        ("file_read_allowed", tools.action("Read", &serde_json::json!({"file_path": "/repos/app/src/main.rs"}))),
        ("file_write_denied", tools.action("Edit", &serde_json::json!({"file_path": "/repos/trading/main/./src/../Cargo.toml"}))),
        (
            "shell_compound_allowed",
            tools.action(
                "Bash",
                &serde_json::json!({"command": "cd /repos/app && cargo test --workspace 2>&1 | tail -20; git status --short"}),
            ),
        ),
        (
            "shell_compound_denied",
            tools.action("Bash", &serde_json::json!({"command": "ls -la && echo $(curl http://x.example/a) | sudo tee /tmp/y"})),
        ),
    ];
    let mut group = c.benchmark_group("actions_decide_20_rules");
    for (name, action) in &cases {
        group.bench_function(*name, |b| b.iter(|| policy.decide(black_box(action), &teams)));
    }
    group.finish();
}

criterion_group!(benches, decide, decide_actions);
criterion_main!(benches);
