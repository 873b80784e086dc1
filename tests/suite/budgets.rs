//! Budgets shared through a real `redis-server` on loopback: two Redis backends (as two replicas have) hold
//! one team budget between them, and reservations racing at a budget admit exactly what it allows.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::redis::RedisServer;
use tollgate::identity::{AuthMethod, Principal};
use tollgate::limits::budget::{BudgetRefusal, Budgets, TeamBudget};
use tollgate::limits::redis::Redis;
use tollgate::limits::{millis, Backend};

const USD: i64 = 1_000_000;

/// 23:00 UTC today: an hour before the day's budget resets. Today, not a fixed date: Redis drops a spend key a
/// day after its period ends by its own (real) clock.
fn eleven_pm() -> SystemTime {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    UNIX_EPOCH + Duration::from_secs(now - now % 86_400 + 23 * 3_600)
}

fn replica(server: &RedisServer) -> Arc<dyn Backend> {
    Arc::new(Redis::connect(&server.url()).expect("valid redis URL"))
}

fn principal(name: &str, team: &str) -> Principal {
    Principal::named(name, &[team], AuthMethod::Basic)
}

fn team_daily(limit: i64) -> Budgets {
    let team = TeamBudget { daily: Some(limit), ..TeamBudget::default() };
    Budgets { teams: [(Arc::from("core"), team)].into_iter().collect(), ..Budgets::default() }
}

async fn spent(backend: &Arc<dyn Backend>, budgets: &Budgets, who: &Principal, now: SystemTime) -> Vec<i64> {
    let keys = budgets.keys(who, &budgets.applying(who), now);
    backend.spend(&keys, millis(now)).await.expect("redis answers")
}

#[tokio::test]
async fn two_replicas_share_one_team_budget() {
    let server = RedisServer::start().await;
    let (one, two) = (replica(&server), replica(&server));
    let budgets = team_daily(10 * USD);
    let (ana, ben) = (principal("ana", "core"), principal("ben", "core"));
    let now = eleven_pm();

    let reservation = budgets.reserve(&one, &ana, 2 * USD, now).await.expect("redis answers").expect("under budget");
    // The other replica sees the estimate at once.
    assert_eq!(spent(&two, &budgets, &ben, now).await, vec![2 * USD]);
    reservation.settle(7 * USD, now).await.expect("settles");
    let reservation = budgets.reserve(&two, &ben, USD, now).await.expect("redis answers").expect("7 of 10 spent");
    reservation.settle(3 * USD, now).await.expect("settles");

    for (replica, who) in [(&one, &ana), (&two, &ben)] {
        let refusal = budgets.reserve(replica, who, USD, now).await.expect("redis answers").expect_err("spent");
        let expected = BudgetRefusal {
            scope: "team_daily",
            team: Some(Arc::from("core")),
            limit_micro_usd: 10 * USD,
            spent_micro_usd: 10 * USD,
            request_micro_usd: None,
            retry_after: Duration::from_secs(3600),
        };
        assert_eq!(refusal, expected);
    }
    // The refusals left nothing behind.
    assert_eq!(spent(&one, &budgets, &ana, now).await, vec![10 * USD]);
    // The next UTC day, either replica may spend again.
    let tomorrow = now + Duration::from_secs(3600);
    budgets.reserve(&two, &ana, USD, tomorrow).await.expect("redis answers").expect("a new day");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_reservations_admit_exactly_what_the_budget_allows() {
    let server = RedisServer::start().await;
    let replicas = [replica(&server), replica(&server)];
    let estimate = 3 * USD;
    // Five estimates fit; the sixth would find the budget spent.
    let budgets = Arc::new(team_daily(5 * estimate));
    let now = eleven_pm();
    // Connect both first, so the race is between reservations, not connection set-up.
    for replica in &replicas {
        assert_eq!(spent(replica, &budgets, &principal("warm", "core"), now).await, vec![0]);
    }

    let start = Arc::new(tokio::sync::Barrier::new(40));
    let mut racers = Vec::new();
    for index in 0..40 {
        let (backend, budgets, start) = (replicas[index % 2].clone(), budgets.clone(), start.clone());
        racers.push(tokio::spawn(async move {
            let who = principal(&format!("user{index}"), "core");
            start.wait().await;
            budgets.reserve(&backend, &who, estimate, now).await.expect("redis answers")
        }));
    }
    let mut admitted = Vec::new();
    let mut refused = 0;
    for racer in racers {
        match racer.await.expect("the racer finishes") {
            Ok(reservation) => admitted.push(reservation),
            Err(refusal) => {
                assert_eq!(refusal.scope, "team_daily");
                assert!(refusal.spent_micro_usd >= 5 * estimate, "{refusal:?}");
                refused += 1;
            }
        }
    }
    assert_eq!((admitted.len(), refused), (5, 35));
    // Every refusal took its estimate back; the five admitted hold theirs until settled.
    let who = principal("ana", "core");
    assert_eq!(spent(&replicas[0], &budgets, &who, now).await, vec![5 * estimate]);
    let mut total = 0;
    for (index, reservation) in admitted.into_iter().enumerate() {
        let cost = USD * (index as i64 + 1);
        reservation.settle(cost, now).await.expect("settles");
        total += cost;
    }
    assert_eq!(spent(&replicas[1], &budgets, &who, now).await, vec![total]);
}
