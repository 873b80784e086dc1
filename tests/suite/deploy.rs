//! The Kubernetes manifests in `deploy/k8s/` are ones a cluster takes: every kustomization renders with
//! `kubectl kustomize` and every document validates offline against the Kubernetes schemas (PyPI
//! `kubernetes-validate`, strict, for the oldest and the newest Kubernetes the manifests support); every container
//! meets the `restricted` Pod Security Standard; the probes hit the admin listener the config binds; each config in a
//! ConfigMap passes `tollgate check` in a directory laid out as the pod mounts it; the NetworkPolicies leave the
//! gateway as the only way out; the monitoring resources match the Service and `deploy/prometheus`. The systemd unit
//! is hardened and passes `systemd-analyze verify` (and its `security` score); the Dockerfile copies files that exist,
//! runs as a non-root user, its default config passes `tollgate check`, and its health check script, run against a
//! real admin listener, says healthy only on a 200 from `/readyz` (the image itself is not built here: no Docker).
//!
//! `kubectl` (its `kustomize` is built in) and `systemd-analyze` are installed by `scripts/test` when missing;
//! `$KUBECTL` and `$SYSTEMD_ANALYZE` name others. The validator runs in the Python venv of `scripts/test`
//! (`TOLLGATE_TEST_PYTHON`).

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

/// The Kubernetes versions every document must validate against: the oldest the manifests support (native
/// sidecars and the preStop `sleep` action are on by default from 1.30) and the newest the validator knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

/// The kustomizations a change must keep rendering (others found under deploy/k8s are checked too).
const KUSTOMIZATIONS: [&str; 4] =
    ["base", "overlays/central", "overlays/central-prometheus-operator", "overlays/sidecar"];

/// Custom resources the Kubernetes schemas do not describe, and may appear: the Prometheus Operator's. They are
/// not schema-validated (no offline schema for them here); `the_prometheus_operator_resources_*` checks their content.
const CUSTOM_KINDS: [&str; 2] = ["monitoring.coreos.com/v1 ServiceMonitor", "monitoring.coreos.com/v1 PrometheusRule"];

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A command's stdout; panics with its stderr when it fails or cannot be started.
fn run(command: &mut Command, what: &str) -> String {
    let output = command.output().unwrap_or_else(|error| panic!("{what}: cannot be run: {error}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

fn kubectl() -> Command {
    let binary = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".to_owned());
    if let Err(error) = Command::new(&binary).args(["version", "--client"]).output() {
        panic!(
            "{binary} cannot be run ({error}): the deploy tests render deploy/k8s with `kubectl kustomize`; install \
             the package kubectl (scripts/test and .ci/run do when it is missing), or set KUBECTL to a kubectl binary"
        );
    }
    Command::new(binary)
}

/// Every directory under deploy/k8s with a kustomization.yaml, relative to deploy/k8s.
fn kustomizations() -> Vec<String> {
    fn walk(dir: &Path, root: &Path, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                if path.join("kustomization.yaml").exists() {
                    found.push(path.strip_prefix(root).expect("under root").display().to_string());
                }
                walk(&path, root, found);
            }
        }
    }
    let root = repository().join("deploy/k8s");
    let mut found = Vec::new();
    walk(&root, &root, &mut found);
    found.sort();
    found
}

/// One rendered kustomization: its documents, and what the validator said.
struct Rendered {
    name: String,
    documents: Vec<Value>,
}

impl Rendered {
    /// Renders `deploy/k8s/NAME` and validates every document; panics on a schema error or an unexpected kind
    /// without a schema.
    fn new(name: &str) -> Rendered {
        let yaml = run(
            kubectl().arg("kustomize").arg(repository().join("deploy/k8s").join(name)),
            &format!("kubectl kustomize deploy/k8s/{name}"),
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("rendered.yaml");
        std::fs::write(&file, &yaml).expect("write the rendered manifests");
        let output = run(
            Command::new(common::python())
                .arg(repository().join("tests/clients/kubernetes_manifests.py"))
                .arg("validate")
                .arg(&file)
                .args(KUBERNETES_VERSIONS),
            "kubernetes_manifests.py validate",
        );
        let report: Value = serde_json::from_str(&output).expect("the validator prints JSON");
        let errors = report["errors"].as_array().expect("errors");
        assert!(errors.is_empty(), "deploy/k8s/{name} does not validate:\n{}", lines(errors));
        for kind in report["without_schema"].as_array().expect("without_schema") {
            let kind = kind.as_str().expect("a string");
            assert!(
                CUSTOM_KINDS.iter().any(|custom| kind.starts_with(&format!("{custom}/"))),
                "deploy/k8s/{name}: {kind} has no Kubernetes schema and is not a custom resource the tests check"
            );
        }
        let documents = report["documents"].as_array().expect("documents").clone();
        assert!(!documents.is_empty(), "deploy/k8s/{name} renders nothing");
        Rendered { name: name.to_owned(), documents }
    }

    fn of_kind<'s>(&'s self, kind: &str) -> std::vec::IntoIter<&'s Value> {
        self.documents.iter().filter(|document| document["kind"] == kind).collect::<Vec<_>>().into_iter()
    }

    /// The one document of `kind` named `name`.
    fn find<'s>(&'s self, kind: &str, name: &str) -> &'s Value {
        let mut found = self.of_kind(kind).filter(|document| document["metadata"]["name"] == name);
        let document = found.next().unwrap_or_else(|| panic!("{}: no {kind} {name}", self.name));
        assert!(found.next().is_none(), "{}: two {kind}s named {name}", self.name);
        document
    }

    /// Each workload's pod template, with the workload's namespace and name.
    fn pod_templates(&self) -> Vec<(String, String, &Value)> {
        self.of_kind("Deployment")
            .map(|deployment| {
                (
                    text(&deployment["metadata"]["namespace"]),
                    text(&deployment["metadata"]["name"]),
                    &deployment["spec"]["template"],
                )
            })
            .collect()
    }
}

fn lines(values: &[Value]) -> String {
    values.iter().map(|value| format!("  {}", value.as_str().unwrap_or_default())).collect::<Vec<_>>().join("\n")
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_else(|| panic!("not a string: {value}")).to_owned()
}

fn array(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// Every kustomization, rendered and validated once for all the tests of this module.
fn every_kustomization() -> &'static [Rendered] {
    static RENDERED: OnceLock<Vec<Rendered>> = OnceLock::new();
    RENDERED.get_or_init(|| {
        let found = kustomizations();
        for expected in KUSTOMIZATIONS {
            assert!(found.iter().any(|name| name == expected), "deploy/k8s/{expected} is missing; found {found:?}");
        }
        found.iter().map(|name| Rendered::new(name)).collect()
    })
}

/// One kustomization, rendered and validated.
fn rendered(name: &str) -> &'static Rendered {
    every_kustomization().iter().find(|rendered| rendered.name == name).expect("a rendered kustomization")
}

/// The containers of a pod template, init containers (native sidecars) included.
fn containers(template: &Value) -> Vec<&Value> {
    array(&template["spec"]["initContainers"]).iter().chain(array(&template["spec"]["containers"])).collect()
}

fn is_tollgate(container: &Value) -> bool {
    container["image"].as_str().is_some_and(|image| image.rsplit('/').next().unwrap_or(image).starts_with("tollgate:"))
}

#[test]
fn every_kustomization_renders_and_validates_against_the_kubernetes_schemas() {
    // What each must hold, so that an overlay that renders empty or loses a part fails here.
    let kinds = |name: &str| -> BTreeSet<String> {
        rendered(name).documents.iter().map(|document| text(&document["kind"])).collect()
    };
    let central = kinds("overlays/central");
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
    ] {
        assert!(central.contains(kind), "overlays/central has no {kind}: {central:?}");
    }
    let operator = kinds("overlays/central-prometheus-operator");
    assert!(operator.is_superset(&central), "the operator overlay is the central one plus monitoring");
    assert!(operator.contains("ServiceMonitor") && operator.contains("PrometheusRule"), "{operator:?}");
    let sidecar = kinds("overlays/sidecar");
    for kind in ["Namespace", "ConfigMap", "Deployment", "NetworkPolicy"] {
        assert!(sidecar.contains(kind), "overlays/sidecar has no {kind}: {sidecar:?}");
    }
}

#[test]
fn the_validation_refuses_a_field_the_schema_does_not_have() {
    // The validator is strict: a misspelt field fails (the test above would otherwise prove little).
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: x}\nspec:\n  maxUnavailble: 1\n  \
         selector: {matchLabels: {a: b}}\n",
    )
    .expect("write");
    let output = run(
        Command::new(common::python())
            .arg(repository().join("tests/clients/kubernetes_manifests.py"))
            .arg("validate")
            .arg(&file)
            .args(KUBERNETES_VERSIONS),
        "kubernetes_manifests.py validate",
    );
    let report: Value = serde_json::from_str(&output).expect("JSON");
    let errors = array(&report["errors"]);
    assert_eq!(errors.len(), KUBERNETES_VERSIONS.len(), "{report}");
    assert!(errors.iter().all(|e| e.as_str().unwrap().contains("'maxUnavailble' was unexpected")), "{report}");
}

#[test]
fn every_container_meets_the_restricted_pod_security_standard() {
    for rendered in every_kustomization() {
        let namespaces: Vec<&Value> = rendered.of_kind("Namespace").collect();
        for namespace in &namespaces {
            assert_eq!(
                namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted",
                "{}: namespace {} does not enforce the restricted Pod Security Standard",
                rendered.name, namespace["metadata"]["name"]
            );
        }
        for (namespace, name, template) in rendered.pod_templates() {
            let at = format!("{}: {namespace}/{name}", rendered.name);
            assert!(
                namespaces.iter().any(|n| n["metadata"]["name"] == namespace.as_str()),
                "{at}: its namespace is not one this kustomization labels restricted"
            );
            let pod = &template["spec"];
            for host in ["hostNetwork", "hostPID", "hostIPC"] {
                assert_ne!(pod[host], true, "{at}: {host}");
            }
            assert_eq!(pod["automountServiceAccountToken"], false, "{at}: mounts a service account token");
            for volume in array(&pod["volumes"]) {
                assert!(volume["hostPath"].is_null(), "{at}: hostPath volume {}", volume["name"]);
            }
            let pod_security = &pod["securityContext"];
            let list = containers(template);
            assert!(!list.is_empty(), "{at}: no containers");
            for container in list {
                let at = format!("{at} container {}", container["name"]);
                let security = &container["securityContext"];
                let either = |field: &str| {
                    if security[field].is_null() {
                        &pod_security[field]
                    } else {
                        &security[field]
                    }
                };
                assert_eq!(either("runAsNonRoot"), &Value::Bool(true), "{at}: runAsNonRoot");
                assert_ne!(either("runAsUser"), &Value::from(0), "{at}: runs as root");
                assert_eq!(either("seccompProfile")["type"], "RuntimeDefault", "{at}: seccompProfile");
                assert_eq!(security["allowPrivilegeEscalation"], false, "{at}: allowPrivilegeEscalation");
                assert_eq!(security["readOnlyRootFilesystem"], true, "{at}: readOnlyRootFilesystem");
                assert_ne!(security["privileged"], true, "{at}: privileged");
                assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]), "{at}: capabilities.drop");
                assert!(array(&security["capabilities"]["add"]).is_empty(), "{at}: adds capabilities");
                assert!(array(&container["ports"]).iter().all(|p| p["hostPort"].is_null()), "{at}: hostPort");
            }
        }
    }
}

/// The config a tollgate container runs: the file its `-c` names, from the ConfigMap mounted there.
struct ContainerConfig {
    /// The config as JSON.
    config: Value,
}

/// The config a tollgate container runs: the file its `tollgate run -c FILE` names (relative to its working
/// directory), read from the ConfigMap mounted at that file's directory (a whole-directory mount, never `subPath`).
fn config_of(rendered: &Rendered, namespace: &str, template: &Value, container: &Value) -> ContainerConfig {
    let arguments: Vec<String> = array(&container["args"]).iter().map(text).collect();
    let at = |i: usize| arguments.get(i).cloned().unwrap_or_default();
    let position = arguments.iter().position(|a| a == "-c").expect("the container names its config with -c");
    assert_eq!(at(0), "run", "{}: the container runs `tollgate run`: {arguments:?}", rendered.name);
    let file = Path::new(&text(&container["workingDir"])).join(at(position + 1));
    let mount = array(&container["volumeMounts"])
        .iter()
        .find(|mount| file.parent() == Some(Path::new(&text(&mount["mountPath"]))))
        .unwrap_or_else(|| panic!("{}: nothing is mounted where {} is", rendered.name, file.display()));
    assert!(mount["subPath"].is_null(), "{}: a subPath mount is never updated, so never reloaded", rendered.name);
    let volume = array(&template["spec"]["volumes"])
        .iter()
        .find(|volume| volume["name"] == mount["name"])
        .expect("the mounted volume");
    let map_name = text(&volume["configMap"]["name"]);
    let map = rendered
        .of_kind("ConfigMap")
        .find(|map| map["metadata"]["name"] == map_name.as_str() && map["metadata"]["namespace"] == namespace)
        .unwrap_or_else(|| panic!("{}: no ConfigMap {namespace}/{map_name}", rendered.name));
    let key = file.file_name().expect("a file name").to_str().expect("UTF-8");
    let text = text(&map["data"][key]);
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("config.yaml"), &text).expect("write");
    let json = run(
        Command::new(common::python())
            .arg(repository().join("tests/clients/kubernetes_manifests.py"))
            .arg("json")
            .arg(dir.path().join("config.yaml")),
        "kubernetes_manifests.py json",
    );
    ContainerConfig { config: serde_json::from_str(&json).expect("JSON") }
}

/// The port a probe names (a number, or a port name of the container).
fn probe_port(container: &Value, port: &Value) -> u64 {
    if let Some(number) = port.as_u64() {
        return number;
    }
    array(&container["ports"])
        .iter()
        .find(|p| p["name"] == *port)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("container {} has no port named {port}", container["name"]))
}

#[test]
fn the_probes_ask_the_admin_listener_the_config_binds() {
    let mut tollgate_containers = 0;
    for rendered in every_kustomization() {
        for (namespace, name, template) in rendered.pod_templates() {
            for container in containers(template).into_iter().filter(|c| is_tollgate(c)) {
                tollgate_containers += 1;
                let at = format!("{}: {namespace}/{name}", rendered.name);
                let config = config_of(rendered, &namespace, template, container).config;
                let bind = text(&config["admin"]["bind"]);
                let admin_port: u64 = bind.rsplit(':').next().and_then(|p| p.parse().ok()).expect("admin.bind port");
                assert!(
                    bind.starts_with("0.0.0.0:") || bind.starts_with("[::]:"),
                    "{at}: admin.bind {bind} is not reachable from the kubelet on the pod IP"
                );
                for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
                    let get = &container[probe]["httpGet"];
                    assert_eq!(get["path"], path, "{at}: {probe}");
                    assert_eq!(probe_port(container, &get["port"]), admin_port, "{at}: {probe} port");
                }
                if !container["startupProbe"].is_null() {
                    let get = &container["startupProbe"]["httpGet"];
                    assert_eq!(probe_port(container, &get["port"]), admin_port, "{at}: startupProbe port");
                }
            }
        }
    }
    assert!(tollgate_containers >= 3, "the gateway (base, central) and the sidecar: {tollgate_containers} found");
}

/// A password hash for the users file the check reads (what `tollgate passwd` prints).
fn password_hash() -> String {
    common::hash("a password for the deploy test")
}

/// Lays out a working directory as the pod mounts it (the ConfigMaps' files, keys made by `tollgate ca init` and
/// `tollgate audit keygen` under the names the Secrets' items give, a users file) and runs `tollgate check` there
/// with the container's arguments and environment.
fn check_in_pod_layout(rendered: &Rendered, namespace: &str, template: &Value, container: &Value) -> PathBuf {
    let at = format!("{}: {namespace} container {}", rendered.name, container["name"]);
    let binary = env!("CARGO_BIN_EXE_tollgate");
    let root = tempfile::tempdir().expect("temp dir").keep();
    let made = root.join(".made");
    run(Command::new(binary).args(["ca", "init", "--dir"]).arg(&made), "tollgate ca init");
    run(Command::new(binary).args(["audit", "keygen", "--dir"]).arg(&made), "tollgate audit keygen");
    std::fs::write(
        made.join("users.yaml"),
        format!("- {{name: workload-a, password_hash: \"{}\"}}\n", password_hash()),
    )
    .expect("write users");
    let working_dir = PathBuf::from(text(&container["workingDir"]));
    for mount in array(&container["volumeMounts"]) {
        let mount_path = PathBuf::from(text(&mount["mountPath"]));
        let relative = mount_path
            .strip_prefix(&working_dir)
            .unwrap_or_else(|_| panic!("{at}: {} is outside the working directory", mount_path.display()));
        let dir = root.join(relative);
        std::fs::create_dir_all(&dir).expect("mount dir");
        let volume = array(&template["spec"]["volumes"]).iter().find(|v| v["name"] == mount["name"]).expect("volume");
        if let Some(map_name) = volume["configMap"]["name"].as_str() {
            let map = rendered
                .of_kind("ConfigMap")
                .find(|map| map["metadata"]["name"] == map_name && map["metadata"]["namespace"] == namespace)
                .unwrap_or_else(|| panic!("{at}: no ConfigMap {map_name}"));
            for (key, value) in map["data"].as_object().expect("data") {
                std::fs::write(dir.join(key), text(value)).expect("write a ConfigMap file");
            }
        } else if volume["secret"].is_object() {
            let items = array(&volume["secret"]["items"]);
            assert!(!items.is_empty(), "{at}: Secret volume {} names its items, so the files are known", mount["name"]);
            for item in items {
                let key = text(&item["key"]);
                let source = made.join(&key);
                assert!(source.exists(), "{at}: the test does not know how to make Secret key {key}");
                std::fs::copy(&source, dir.join(text(&item["path"]))).expect("copy a Secret file");
            }
        } else {
            assert!(
                volume["emptyDir"].is_object(),
                "{at}: volume {} is neither ConfigMap, Secret nor emptyDir",
                mount["name"]
            );
        }
    }
    let arguments: Vec<String> = array(&container["args"]).iter().map(text).collect();
    let config = &arguments[arguments.iter().position(|a| a == "-c").expect("-c") + 1];
    let mut command = Command::new(binary);
    command.current_dir(&root).env_remove("TOLLGATE_CONFIG").args(["check", "-c", config]);
    for variable in array(&container["env"]) {
        let value = match variable["value"].as_str() {
            Some(value) => value.to_owned(),
            None if variable["valueFrom"]["secretKeyRef"].is_object() => "a-secret-value".to_owned(),
            None if variable["valueFrom"]["fieldRef"].is_object() => "example-workload".to_owned(),
            None => panic!("{at}: env {} has a source the test does not know", variable["name"]),
        };
        command.env(text(&variable["name"]), value);
    }
    let output = run(&mut command, &format!("{at}: tollgate check -c {config}"));
    assert!(output.contains(&format!("{config}: ok")), "{at}: {output}");
    root
}

#[test]
fn every_config_in_a_config_map_passes_tollgate_check_as_the_pod_mounts_it() {
    let mut checked = BTreeSet::new();
    for rendered in every_kustomization() {
        for (namespace, name, template) in rendered.pod_templates() {
            for container in containers(template).into_iter().filter(|c| is_tollgate(c)) {
                let root = check_in_pod_layout(rendered, &namespace, template, container);
                let config = config_of(rendered, &namespace, template, container);
                // Files tollgate would otherwise create at start (the interception CA) must come from the Secret:
                // the replicas share one CA, and the mount is read-only.
                if let Some(ca) = config.config["intercept"]["ca"].as_object() {
                    for file in ["cert", "key"] {
                        let path = root.join(text(&ca[file]));
                        assert!(
                            path.exists(),
                            "{}: intercept.ca.{file} {} is not mounted",
                            rendered.name,
                            path.display()
                        );
                    }
                }
                std::fs::remove_dir_all(&root).expect("remove the layout");
                checked.insert(format!("{}:{namespace}/{name}", rendered.name));
            }
        }
    }
    for expected in ["overlays/central:tollgate/tollgate", "overlays/sidecar:sidecar-example/example-agent"] {
        assert!(checked.contains(expected), "{expected} was not checked: {checked:?}");
    }
}

#[test]
fn the_central_gateway_is_replicated_and_shares_its_state_through_redis() {
    let central = rendered("overlays/central");
    let deployment = central.find("Deployment", "tollgate");
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2, "{}", deployment["spec"]["replicas"]);
    assert_eq!(deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let selects = |selector: &Value| {
        selector["matchLabels"].as_object().expect("matchLabels").iter().all(|(key, value)| &labels[key] == value)
    };
    let budget = central.find("PodDisruptionBudget", "tollgate");
    assert!(selects(&budget["spec"]["selector"]), "the PodDisruptionBudget selects the gateway pods");
    assert_eq!(budget["spec"]["maxUnavailable"], 1);
    let autoscaler = central.find("HorizontalPodAutoscaler", "tollgate");
    assert_eq!(autoscaler["spec"]["scaleTargetRef"]["name"], "tollgate");
    assert_eq!(autoscaler["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert!(autoscaler["spec"]["minReplicas"].as_u64().unwrap() >= 2);
    let container = containers(&deployment["spec"]["template"])[0];
    assert!(!container["resources"]["requests"]["cpu"].is_null(), "a CPU-utilisation autoscaler needs a CPU request");
    // Longer than the config's shutdown grace, with the preStop pause.
    let config = config_of(central, "tollgate", &deployment["spec"]["template"], container).config;
    assert_eq!(config["state"]["backend"], "redis");
    let redis_url = text(&config["state"]["redis_url"]);
    let service = central.find("Service", "tollgate-redis");
    assert!(
        redis_url.contains(&format!("@tollgate-redis:{}", service["spec"]["ports"][0]["port"])),
        "state.redis_url {redis_url} names the Redis Service"
    );
    let redis = central.find("Deployment", "tollgate-redis");
    let redis_labels = &redis["spec"]["template"]["metadata"]["labels"];
    assert!(
        service["spec"]["selector"].as_object().unwrap().iter().all(|(k, v)| &redis_labels[k] == v),
        "the Redis Service selects the Redis pod"
    );
    let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap();
    let shutdown_grace: u64 = text(&config["server"]["shutdown_grace"]).trim_end_matches('s').parse().expect("seconds");
    let pause = container["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64().unwrap_or(0);
    assert!(grace > shutdown_grace + pause, "terminationGracePeriodSeconds {grace} ≤ shutdown_grace + preStop");
}

/// The ports of a NetworkPolicy rule, as `PROTOCOL/PORT` (TCP when the protocol is not given).
fn ports(rule: &Value) -> BTreeSet<String> {
    array(&rule["ports"]).iter().map(|p| format!("{}/{}", p["protocol"].as_str().unwrap_or("TCP"), p["port"])).collect()
}

fn is_dns(rule: &Value) -> bool {
    let peers = array(&rule["to"]);
    peers.len() == 1
        && peers[0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == "kube-system"
        && peers[0]["podSelector"]["matchLabels"]["k8s-app"] == "kube-dns"
        && ports(rule) == BTreeSet::from(["UDP/53".to_owned(), "TCP/53".to_owned()])
}

/// An egress rule to port 443 of public addresses only: every ipBlock excepts the private ranges.
fn is_public_https(rule: &Value) -> bool {
    let private_v4 =
        ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10", "127.0.0.0/8"];
    let peers = array(&rule["to"]);
    ports(rule) == BTreeSet::from(["TCP/443".to_owned()])
        && !peers.is_empty()
        && peers.iter().all(|peer| {
            let except: Vec<&str> = array(&peer["ipBlock"]["except"]).iter().filter_map(Value::as_str).collect();
            match peer["ipBlock"]["cidr"].as_str() {
                Some("0.0.0.0/0") => private_v4.iter().all(|range| except.contains(range)),
                Some("::/0") => ["fc00::/7", "fe80::/10"].iter().all(|range| except.contains(range)),
                _ => false,
            }
        })
}

#[test]
fn the_network_policies_make_the_gateway_the_only_way_out() {
    let central = rendered("overlays/central");
    let policies: Vec<&Value> = central.of_kind("NetworkPolicy").collect();
    let in_namespace = |namespace: &str| -> Vec<&Value> {
        policies.iter().copied().filter(|p| p["metadata"]["namespace"] == namespace).collect()
    };

    // Everything in the gateway's namespace is denied unless a policy allows it.
    assert!(
        in_namespace("tollgate").iter().any(|p| p["spec"]["podSelector"] == serde_json::json!({})
            && p["spec"]["policyTypes"] == serde_json::json!(["Ingress", "Egress"])
            && p["spec"]["ingress"].is_null()
            && p["spec"]["egress"].is_null()),
        "no default-deny policy in the namespace tollgate"
    );
    // The gateway: DNS, 443 outside the private ranges, Redis; nothing else.
    let gateway = central.find("NetworkPolicy", "tollgate-gateway");
    let egress = array(&gateway["spec"]["egress"]);
    assert_eq!(egress.len(), 2, "{egress:?}");
    assert!(egress.iter().any(is_dns), "the gateway may resolve names");
    assert!(egress.iter().any(is_public_https), "the gateway may reach 443 outside the private ranges");
    let to_redis = central.find("NetworkPolicy", "tollgate-gateway-to-redis");
    assert_eq!(array(&to_redis["spec"]["egress"]).len(), 1);
    assert_eq!(ports(&to_redis["spec"]["egress"][0]), BTreeSet::from(["TCP/6379".to_owned()]));
    let redis = central.find("NetworkPolicy", "tollgate-redis");
    assert_eq!(redis["spec"]["policyTypes"], serde_json::json!(["Ingress", "Egress"]));
    assert!(redis["spec"]["egress"].is_null(), "Redis connects nowhere");
    assert_eq!(
        redis["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "gateway"
    );

    // A workload namespace: egress to the gateway's proxy port and DNS only, and the label the gateway admits.
    let workloads = central.find("Namespace", "workloads");
    let admitted = &gateway["spec"]["ingress"][0];
    assert_eq!(ports(admitted), BTreeSet::from(["TCP/3128".to_owned()]));
    for (label, value) in admitted["from"][0]["namespaceSelector"]["matchLabels"].as_object().expect("a label") {
        assert_eq!(&workloads["metadata"]["labels"][label], value, "the workload namespace has the label {label}");
    }
    let workload_policies = in_namespace("workloads");
    assert_eq!(workload_policies.len(), 1);
    let policy = &workload_policies[0]["spec"];
    assert_eq!(policy["podSelector"], serde_json::json!({}), "every pod of the namespace");
    assert!(array(&policy["policyTypes"]).contains(&Value::from("Egress")));
    let egress = array(&policy["egress"]);
    assert_eq!(egress.len(), 2, "{egress:?}");
    assert!(egress.iter().any(is_dns));
    let through_gateway = egress.iter().find(|rule| !is_dns(rule)).expect("the gateway rule");
    assert_eq!(ports(through_gateway), BTreeSet::from(["TCP/3128".to_owned()]));
    let peer = &through_gateway["to"][0];
    assert_eq!(peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], "tollgate");
    assert_eq!(peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"], "gateway");
    assert!(peer["ipBlock"].is_null());

    // The sidecar's pod: DNS and public 443 only (which the workload container shares: docs/deploy.md).
    let sidecar = rendered("overlays/sidecar");
    let policy = sidecar.of_kind("NetworkPolicy").next().expect("the sidecar pod's policy");
    let egress = array(&policy["spec"]["egress"]);
    assert_eq!(egress.len(), 2);
    assert!(egress.iter().any(is_dns) && egress.iter().any(is_public_https), "{egress:?}");
    let deployment = sidecar.of_kind("Deployment").next().expect("the workload");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (label, value) in policy["spec"]["podSelector"]["matchLabels"].as_object().expect("labels") {
        assert_eq!(&pod_labels[label], value, "the policy selects the workload's pod");
    }
    let workload = &deployment["spec"]["template"]["spec"]["containers"][0];
    let proxy = array(&workload["env"]).iter().find(|e| e["name"] == "HTTPS_PROXY").expect("HTTPS_PROXY");
    assert_eq!(proxy["value"], "http://127.0.0.1:3128");
}

#[test]
fn the_prometheus_operator_resources_match_the_service_and_deploy_prometheus() {
    let operator = rendered("overlays/central-prometheus-operator");
    let service = operator.find("Service", "tollgate");
    // The job label is the Service's name; the rules read up{job="tollgate"}.
    let monitor = operator.find("ServiceMonitor", "tollgate");
    assert_eq!(monitor["metadata"]["namespace"], "tollgate");
    let selected: Vec<&Value> = operator
        .of_kind("Service")
        .filter(|s| {
            monitor["spec"]["selector"]["matchLabels"]
                .as_object()
                .unwrap()
                .iter()
                .all(|(key, value)| &s["metadata"]["labels"][key] == value)
        })
        .collect();
    assert_eq!(selected.len(), 1, "the ServiceMonitor selects exactly the Service tollgate (no double scrape)");
    assert_eq!(selected[0]["metadata"]["name"], "tollgate");
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["path"], "/metrics");
    let port = array(&service["spec"]["ports"]).iter().find(|p| p["name"] == endpoint["port"]).expect("the port");
    assert_eq!(port["port"], 9191, "the ServiceMonitor scrapes the admin port");

    let rules = operator.find("PrometheusRule", "tollgate");
    let expected = run(
        Command::new(common::python())
            .arg(repository().join("tests/clients/kubernetes_manifests.py"))
            .arg("json")
            .arg(repository().join("deploy/prometheus/tollgate-rules.yml")),
        "kubernetes_manifests.py json",
    );
    let expected: Value = serde_json::from_str(&expected).expect("JSON");
    assert!(array(&expected["groups"]).len() >= 3);
    assert!(
        rules["spec"] == expected,
        "deploy/k8s/overlays/central-prometheus-operator/prometheusrule.yaml differs from \
         deploy/prometheus/tollgate-rules.yml: make it again with the command in its header"
    );

    // Without the operator: the scrape job and the same rule file, checked by promtool.
    let binary = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".to_owned());
    let output = run(
        Command::new(&binary).args(["check", "config"]).arg(repository().join("deploy/k8s/monitoring/prometheus.yml")),
        "promtool check config deploy/k8s/monitoring/prometheus.yml (promtool is in the Debian package prometheus)",
    );
    assert!(output.contains("SUCCESS") && output.contains("rules found"), "{output}");
    let scrape = std::fs::read_to_string(repository().join("deploy/k8s/monitoring/prometheus.yml")).expect("read");
    assert!(scrape.contains("job_name: tollgate"));
    let headless = operator.find("Service", "tollgate-metrics");
    assert!(scrape.contains("names: [tollgate-metrics.tollgate.svc.cluster.local]"));
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
}

/// The `KEY=VALUE` lines of a systemd unit, in order, with their section (`Service`, `Unit`, …).
fn unit_directives(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut directives = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("not KEY=VALUE: {line}"));
        directives.push((section.clone(), key.to_owned(), value.to_owned()));
    }
    directives
}

fn systemd_analyze() -> Command {
    let binary = std::env::var("SYSTEMD_ANALYZE").unwrap_or_else(|_| "systemd-analyze".to_owned());
    if let Err(error) = Command::new(&binary).arg("--version").output() {
        panic!(
            "{binary} cannot be run ({error}): the deploy tests verify deploy/systemd with it; install the Debian \
             package systemd (scripts/test does when it is missing), or set SYSTEMD_ANALYZE"
        );
    }
    Command::new(binary)
}

#[test]
fn the_systemd_unit_is_hardened_and_systemd_accepts_it() {
    let unit = std::fs::read_to_string(repository().join("deploy/systemd/tollgate.service")).expect("the unit");
    let directives = unit_directives(&unit);
    let service = |key: &str| -> Vec<String> {
        directives
            .iter()
            .filter(|(section, k, _)| section == "Service" && k == key)
            .map(|(_, _, v)| v.clone())
            .collect()
    };
    let one = |key: &str| -> String {
        let values = service(key);
        assert_eq!(values.len(), 1, "Service.{key}: {values:?}");
        values[0].clone()
    };
    for (key, value) in [
        ("User", "tollgate"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("StateDirectory", "tollgate"),
        ("WorkingDirectory", "/var/lib/tollgate"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(one(key), value, "Service.{key}");
    }
    let families: BTreeSet<String> = one("RestrictAddressFamilies").split_whitespace().map(str::to_owned).collect();
    assert_eq!(families, BTreeSet::from(["AF_INET".into(), "AF_INET6".into(), "AF_UNIX".into()]));
    assert!(service("SystemCallFilter").contains(&"@system-service".to_owned()));
    let files: u64 = one("LimitNOFILE").parse().expect("a number");
    assert!(files >= 2 * 10_000, "two descriptors per connection for server.max_connections' default");
    // Longer than server.shutdown_grace's default (30s), so that SIGKILL does not cut the drain short.
    let stop: u64 = one("TimeoutStopSec").trim_end_matches('s').parse().expect("seconds");
    assert!(stop > 30, "TimeoutStopSec {stop}");
    let user_line = std::fs::read_to_string(repository().join("deploy/systemd/tollgate.sysusers")).expect("sysusers");
    assert!(user_line.lines().any(|line| line.starts_with("u tollgate ")), "the sysusers file makes the user");

    // systemd's own parser: an unknown directive or a bad value is reported (the command exits 0 regardless, so the
    // test reads what it says). It also checks that the executables exist: the unit is checked with this build's.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("tollgate.service");
    std::fs::write(&file, unit.replace("/usr/local/bin/tollgate", env!("CARGO_BIN_EXE_tollgate"))).expect("write");
    let output = systemd_analyze().arg("verify").arg(&file).output().expect("systemd-analyze verify");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let about_the_unit: Vec<&str> = said.lines().filter(|line| line.contains("tollgate")).collect();
    assert!(output.status.success() && about_the_unit.is_empty(), "systemd-analyze verify:\n{said}");

    // A directive systemd does not know is reported, so the check above can fail.
    let bad = dir.path().join("bad.service");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&file).unwrap().replace("ProtectSystem=strict", "ProtectSystem=strictest"),
    )
    .expect("write");
    let output = systemd_analyze().arg("verify").arg(&bad).output().expect("systemd-analyze verify");
    assert!(String::from_utf8_lossy(&output.stderr).contains("strictest"), "{output:?}");

    // The exposure score systemd gives the unit's sandboxing (0 best, 10 worst; "OK" is below 5.0).
    let output = run(
        systemd_analyze().args(["security", "--offline=yes", "--no-pager"]).arg(&file),
        "systemd-analyze security --offline=yes",
    );
    let score: f64 = output
        .lines()
        .find_map(|line| line.strip_prefix("→ Overall exposure level for tollgate.service: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{output}"));
    assert!(score <= 2.0, "exposure level {score} (was 1.2):\n{output}");
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut joined = String::new();
    let mut instructions = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => joined.push_str(part),
            None => {
                joined.push_str(line);
                let whole = std::mem::take(&mut joined);
                if let Some((instruction, arguments)) = whole.trim().split_once(char::is_whitespace) {
                    instructions.push((instruction.to_uppercase(), arguments.trim().to_owned()));
                }
            }
        }
    }
    instructions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dockerfile_copies_what_exists_runs_as_a_user_and_its_health_check_asks_readyz() {
    let dockerfile = std::fs::read_to_string(repository().join("Dockerfile")).expect("Dockerfile");
    let instructions = dockerfile_instructions(&dockerfile);
    let all = |name: &str| -> Vec<String> {
        instructions.iter().filter(|(i, _)| i == name).map(|(_, arguments)| arguments.clone()).collect()
    };
    let last = |name: &str| all(name).pop().unwrap_or_else(|| panic!("no {name} in the Dockerfile"));
    let stages = all("FROM");
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage: {stages:?}");
    assert!(stages[0].ends_with(" AS build"), "{stages:?}");

    // What it copies from the context exists and is not left out of it by .dockerignore.
    let ignored: Vec<String> = std::fs::read_to_string(repository().join(".dockerignore"))
        .expect(".dockerignore")
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    for pattern in ["target", ".git", "var", "**/*.key"] {
        assert!(ignored.iter().any(|i| i == pattern), ".dockerignore leaves {pattern} in the build context");
    }
    let mut config_in_image = None;
    for copy in all("COPY").iter().filter(|c| !c.starts_with("--from")) {
        let parts: Vec<&str> = copy.split_whitespace().collect();
        let (destination, sources) = parts.split_last().expect("COPY SOURCE... DESTINATION");
        for source in sources {
            if *source == "." {
                continue;
            }
            assert!(repository().join(source).exists(), "COPY {source}: no such file in the repository");
            let first = source.split('/').next().unwrap_or(source);
            assert!(!ignored.iter().any(|i| i == first), "COPY {source}, which .dockerignore leaves out");
            if destination.ends_with(".yaml") {
                config_in_image = Some((source.to_string(), destination.to_string()));
            }
        }
    }
    let (config_source, config_destination) = config_in_image.expect("the image's default config");
    assert_eq!(last("ENV"), format!("TOLLGATE_CONFIG={config_destination}"), "tollgate run finds the config");
    let binary_copy = all("COPY").into_iter().find(|c| c.starts_with("--from=build")).expect("the binary");
    let entrypoint: Vec<String> = serde_json::from_str(&last("ENTRYPOINT")).expect("ENTRYPOINT in exec form");
    assert!(binary_copy.ends_with(&format!(" {}", entrypoint[0])), "ENTRYPOINT runs the binary copied in");
    let user = last("USER");
    let uid: u32 = user.split(':').next().unwrap().parse().expect("a numeric USER (runAsNonRoot can check it)");
    assert_ne!(uid, 0, "the image runs as root");
    assert!(dockerfile.contains(&format!("--uid {uid}")), "USER {user} is the user the image creates");
    let working_dir = last("WORKDIR");

    // The default config passes `tollgate check` from the working directory, as `tollgate run` reads it there.
    let dir = tempfile::tempdir().expect("temp dir");
    let output = run(
        Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .current_dir(dir.path())
            .env_remove("TOLLGATE_CONFIG")
            .args(["check", "-c"])
            .arg(repository().join(&config_source)),
        &format!("tollgate check -c {config_source} (in {working_dir})"),
    );
    assert!(output.contains(": ok"), "{output}");
    let config: Value = serde_json::from_str(&run(
        Command::new(common::python())
            .arg(repository().join("tests/clients/kubernetes_manifests.py"))
            .arg("json")
            .arg(repository().join(&config_source)),
        "kubernetes_manifests.py json",
    ))
    .expect("JSON");
    let admin_bind = text(&config["admin"]["bind"]);
    let proxy_bind = text(&config["listeners"][0]["bind"]);
    assert!(proxy_bind.starts_with("0.0.0.0:"), "a published port reaches the proxy: {proxy_bind}");
    assert!(dockerfile.contains(&format!("EXPOSE {}", proxy_bind.rsplit(':').next().unwrap())));

    // The health check is a bash script (no curl in the image): run it against a real admin listener.
    let healthcheck = last("HEALTHCHECK");
    let command: Vec<String> =
        serde_json::from_str(healthcheck.split_once("CMD ").expect("HEALTHCHECK … CMD [...]").1).expect("exec form");
    assert_eq!(command[..2], ["/bin/bash".to_owned(), "-c".to_owned()]);
    let script = &command[2];
    let (host, port) = admin_bind.rsplit_once(':').expect("HOST:PORT");
    let target = format!("/dev/tcp/{host}/{port}");
    assert!(script.contains(&target) && script.contains("GET /readyz"), "the check asks admin.bind's /readyz");
    let gateway = common::TestGateway::start(common::LOOPBACK_POLICY).await;
    let health = |address: std::net::SocketAddr| {
        let script = script.replace(&target, &format!("/dev/tcp/{}/{}", address.ip(), address.port()));
        Command::new("bash").arg("-c").arg(script).status().expect("bash").success()
    };
    assert!(health(gateway.admin), "healthy: /readyz answers 200");
    assert!(!health(gateway.proxy), "the proxy listener answers /readyz with an error: unhealthy");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address");
    assert!(!health(closed), "nothing listening: unhealthy");
}
