//! Queue behaviour with paused time: deadlines, bounds, priority, abandonment, and where
//! admitted requests go.

use super::*;
use crate::config::PoolArgs;
use crate::pool::{HealthPolicy, Worker};
use crate::worker::Backend;
use bytes::Bytes;
use std::time::Duration;

fn request(priority: i64) -> ValidRequest {
    ValidRequest {
        endpoint: crate::validate::Endpoint::Chat,
        model: "caprl".into(),
        body: Bytes::from_static(b"{}"),
        stream: false,
        client_wants_usage: false,
        images: Vec::new(),
        remote: Vec::new(),
        prompt_tokens: 10,
        image_tokens: 0,
        max_output_tokens: 10,
        priority,
        bulk: false,
    }
}

struct Setup {
    queue: QueueHandle,
    members: Arc<Members>,
    metrics: Metrics,
    _tasks: tokio_util::task::TaskTracker,
}

fn setup(workers: usize, settings: PoolArgs) -> Setup {
    let metrics = Metrics::new();
    let members = Arc::new(Members::new("caprl".into(), settings.clone()));
    let list = (0..workers)
        .map(|i| {
            let url = format!("http://127.0.0.1:{}", 9100 + i);
            let w = Worker::new(
                url.clone(),
                "caprl".into(),
                Backend::http(url),
                HealthPolicy::from(&settings),
                metrics.clone(),
            );
            w.health.record_probe(true);
            Arc::new(w)
        })
        .collect();
    members.set(list);
    let tasks = tokio_util::task::TaskTracker::new();
    let queue = QueueHandle::spawn(
        members.clone(),
        metrics.clone(),
        &tasks,
        tokio_util::sync::CancellationToken::new(),
    );
    Setup {
        queue,
        members,
        metrics,
        _tasks: tasks,
    }
}

fn settings(max_in_flight: u32) -> PoolArgs {
    PoolArgs {
        max_in_flight,
        queue_capacity: 4,
        queue_timeout_secs: 5.0,
        ..PoolArgs::default()
    }
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(600)
}

#[tokio::test(start_paused = true)]
async fn waits_for_room_then_gets_a_lease() {
    let s = setup(1, settings(1));
    let first = s
        .queue
        .admit(&request(0), vec![], far())
        .await
        .expect("room");
    let q = s.queue.clone();
    let waiter = tokio::spawn(async move { q.admit(&request(0), vec![], far()).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !waiter.is_finished(),
        "no room until the first lease is dropped"
    );
    drop(first);
    waiter
        .await
        .expect("joins")
        .expect("admitted after the lease came back");
}

#[tokio::test(start_paused = true)]
async fn answers_429_after_the_queue_timeout() {
    let s = setup(1, settings(1));
    let _held = s
        .queue
        .admit(&request(0), vec![], far())
        .await
        .expect("room");
    let started = Instant::now();
    let err = s
        .queue
        .admit(&request(0), vec![], far())
        .await
        .expect_err("times out");
    assert!(matches!(err, GatewayError::Overloaded { .. }), "{err:?}");
    assert_eq!(err.status(), 429);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
    assert_eq!(
        s.metrics
            .rejections
            .with_label_values(&["caprl", "queue_timeout"])
            .get(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_answers_429_at_once() {
    let s = setup(1, settings(1));
    let _held = s
        .queue
        .admit(&request(0), vec![], far())
        .await
        .expect("room");
    let mut waiters = Vec::new();
    for _ in 0..4 {
        let q = s.queue.clone();
        waiters.push(tokio::spawn(async move {
            q.admit(&request(0), vec![], far()).await.map(|_| ())
        }));
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let started = Instant::now();
    let err = s
        .queue
        .admit(&request(0), vec![], far())
        .await
        .expect_err("full");
    assert_eq!(err.status(), 429);
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "refused without waiting"
    );
    assert!(err.retry_after().is_some());
    assert!(s.metrics.queue_depth.with_label_values(&["caprl"]).get() <= 4);
    for w in waiters {
        w.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn lower_priority_value_goes_first() {
    let s = setup(1, settings(1));
    let held = s
        .queue
        .admit(&request(0), vec![], far())
        .await
        .expect("room");
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for p in [5, 1, 3] {
        let q = s.queue.clone();
        let order = order.clone();
        tasks.push(tokio::spawn(async move {
            let lease = q.admit(&request(p), vec![], far()).await.expect("admitted");
            order.lock().expect("lock").push(p);
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(lease);
        }));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(held);
    for t in tasks {
        t.await.expect("joins");
    }
    assert_eq!(*order.lock().expect("lock"), vec![1, 3, 5]);
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_leaves_is_dropped_and_counted() {
    let s = setup(1, settings(1));
    let held = s
        .queue
        .admit(&request(0), vec![], far())
        .await
        .expect("room");
    let q = s.queue.clone();
    let gone = tokio::spawn(async move { q.admit(&request(0), vec![], far()).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(10)).await;
    gone.abort();
    let _ = gone.await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        s.metrics
            .queue_abandoned
            .with_label_values(&["caprl"])
            .get(),
        1
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        s.members.list()[0].in_flight(),
        0,
        "no lease leaked to the departed caller"
    );
}

#[tokio::test(start_paused = true)]
async fn no_live_worker_is_503_at_once() {
    let s = setup(1, settings(1));
    s.members.list()[0].health.record_probe(false);
    s.members.list()[0].health.record_probe(false);
    let err = s
        .queue
        .admit(&request(0), vec![], far())
        .await
        .expect_err("down");
    assert_eq!(err.status(), 503);
}

#[tokio::test(start_paused = true)]
async fn requests_spread_up_to_each_workers_cap() {
    let s = setup(3, settings(2));
    let mut leases = Vec::new();
    for _ in 0..6 {
        leases.push(
            s.queue
                .admit(&request(0), vec![], far())
                .await
                .expect("room"),
        );
    }
    let counts: Vec<u32> = s.members.list().iter().map(|w| w.in_flight()).collect();
    assert_eq!(counts, vec![2, 2, 2]);
    drop(leases);
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(s.members.list().iter().all(|w| w.in_flight() == 0));
}

#[tokio::test(start_paused = true)]
async fn a_burst_in_one_turn_spreads_over_idle_workers() {
    // Caps far above the burst, so only the policy decides where each request goes.
    let s = setup(
        3,
        PoolArgs {
            queue_capacity: 64,
            ..settings(256)
        },
    );
    // Polled together on this one task, every ticket is in the channel before the actor runs:
    // the actor takes the whole burst in one turn.
    let requests: Vec<ValidRequest> = (0..6).map(|_| request(0)).collect();
    let burst = requests.iter().map(|r| s.queue.admit(r, vec![], far()));
    let leases: Vec<Lease> = futures::future::join_all(burst)
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("room for all");
    let counts: Vec<u32> = s.members.list().iter().map(|w| w.in_flight()).collect();
    assert_eq!(counts, vec![2, 2, 2], "least-outstanding spreads the burst");
    drop(leases);
}

fn bulk() -> ValidRequest {
    ValidRequest {
        bulk: true,
        ..request(0)
    }
}

#[tokio::test(start_paused = true)]
async fn batch_lines_wait_behind_every_interactive_request_and_past_the_capacity() {
    // One worker with room for 4; batch lines may hold half of it.
    let s = setup(
        1,
        PoolArgs {
            batch_share: 0.5,
            ..settings(4)
        },
    );
    let first = s.queue.admit(&bulk(), vec![], far()).await.expect("room");
    let second = s.queue.admit(&bulk(), vec![], far()).await.expect("room");
    // The bulk share is used up: more batch lines wait, more of them than the queue holds
    // (capacity 4) — they do not count against it.
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut waiting = Vec::new();
    for i in 0..6 {
        let q = s.queue.clone();
        let order = order.clone();
        waiting.push(tokio::spawn(async move {
            let lease = q.admit(&bulk(), vec![], far()).await.expect("admitted");
            order.lock().expect("lock").push(format!("bulk{i}"));
            lease
        }));
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        s.metrics
            .bulk_queue_depth
            .with_label_values(&["caprl"])
            .get(),
        6
    );
    // Interactive requests still get the other half at once, though batch lines came first.
    let a = s
        .queue
        .admit(&request(0), vec![], far())
        .await
        .expect("room");
    let b = s
        .queue
        .admit(&request(0), vec![], far())
        .await
        .expect("room");
    assert_eq!(s.members.list()[0].in_flight(), 4);
    assert!(
        order.lock().expect("lock").is_empty(),
        "no batch line past its share"
    );
    drop((a, b));
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(
        order.lock().expect("lock").is_empty(),
        "freed interactive room is not the batch's: it is still at its share"
    );
    drop(first);
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(*order.lock().expect("lock"), vec!["bulk0".to_string()]);
    drop(second);
    for w in waiting {
        w.abort();
    }
}
