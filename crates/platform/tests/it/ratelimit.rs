//! Rate limits in Redis (`MERCATO_TEST_REDIS_URL`): one bucket shared by every replica, taken
//! atomically under concurrency, refilled with time, and open when Redis is gone.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use platform::clock::OffsetClock;
use platform::ratelimit::redis_limiter::RedisRateLimiter;
use platform::ratelimit::{Decision, RateLimiter};
use platform::testing;

const MINUTE: Duration = Duration::from_secs(60);

/// A limiter on the test server under a prefix of its own, or `None` when no server is named.
async fn limiter(clock: Arc<OffsetClock>, prefix: &str) -> Option<RedisRateLimiter> {
    let Some(url) = testing::server_url(testing::REDIS_URL_VAR) else {
        eprintln!("skipped: {} is not set", testing::REDIS_URL_VAR);
        return None;
    };
    Some(
        RedisRateLimiter::connect(&url, prefix, clock)
            .await
            .expect("Redis reachable"),
    )
}

fn prefix() -> String {
    format!("test:{}:", platform::id::new_id().simple())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_bucket_that_refills_with_time() {
    let clock = Arc::new(OffsetClock::default());
    let prefix = prefix();
    let (Some(first), Some(second)) = (
        limiter(clock.clone(), &prefix).await,
        limiter(clock.clone(), &prefix).await,
    ) else {
        return;
    };
    // Five a minute, taken through two replicas in turn.
    for n in 0..5 {
        let replica = if n % 2 == 0 { &first } else { &second };
        assert_eq!(
            replica.check("user:ada", 5, MINUTE).await,
            Decision::Allow,
            "request {n}"
        );
    }
    let Decision::Deny { retry_after } = second.check("user:ada", 5, MINUTE).await else {
        panic!("the sixth request in a minute is refused, whichever replica takes it");
    };
    assert!(
        retry_after > Duration::from_secs(5) && retry_after <= Duration::from_secs(12),
        "{retry_after:?}"
    );
    assert_eq!(
        first.check("user:bob", 5, MINUTE).await,
        Decision::Allow,
        "other keys have their own bucket"
    );
    // A fifth of the window refills one token.
    clock.advance(Duration::from_secs(12));
    assert_eq!(first.check("user:ada", 5, MINUTE).await, Decision::Allow);
    assert!(matches!(
        first.check("user:ada", 5, MINUTE).await,
        Decision::Deny { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_never_spend_more_than_the_limit() {
    let clock = Arc::new(OffsetClock::default());
    let prefix = prefix();
    let mut replicas = Vec::new();
    for _ in 0..4 {
        match limiter(clock.clone(), &prefix).await {
            Some(replica) => replicas.push(replica),
            None => return,
        }
    }
    let decisions = join_all((0..200).map(|n| {
        let replica = replicas[n % replicas.len()].clone();
        async move { replica.check("ip:10.0.0.1", 25, Duration::from_secs(3600)).await }
    }))
    .await;
    let allowed = decisions.iter().filter(|d| **d == Decision::Allow).count();
    assert_eq!(allowed, 25, "exactly the limit, across replicas and under concurrency");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_pass_while_redis_is_unreachable() {
    let Some(url) = testing::server_url(testing::REDIS_URL_VAR) else {
        eprintln!("skipped: {} is not set", testing::REDIS_URL_VAR);
        return;
    };
    // Reach Redis through a proxy this test can cut.
    let upstream = url.trim_start_matches("redis://").split('/').next().unwrap().to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let links: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
    let proxy_links = links.clone();
    let proxy = tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let link = tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
            proxy_links.lock().unwrap().push(link.abort_handle());
        }
    });
    let clock = Arc::new(OffsetClock::default());
    let limiter = RedisRateLimiter::connect(&format!("redis://127.0.0.1:{port}"), &prefix(), clock)
        .await
        .unwrap();
    assert_eq!(limiter.check("user:ada", 1, MINUTE).await, Decision::Allow);
    assert!(matches!(
        limiter.check("user:ada", 1, MINUTE).await,
        Decision::Deny { .. }
    ));
    proxy.abort();
    let _ = proxy.await;
    for link in links.lock().unwrap().drain(..) {
        link.abort();
    }
    // Redis is gone for this limiter (nothing listens on the proxy's port), and requests pass.
    let passed = testing::eventually(Duration::from_secs(10), || async {
        (limiter.check("user:ada", 1, MINUTE).await == Decision::Allow).then_some(())
    })
    .await;
    assert!(passed.is_some(), "the limiter fails open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_throttles_in_redis_lock_a_key_out_on_every_replica_and_double() {
    use platform::ratelimit::redis_limiter::RedisFailureThrottle;
    use platform::ratelimit::{FailureThrottle, ThrottlePolicy};
    let Some(url) = testing::server_url(testing::REDIS_URL_VAR) else {
        eprintln!("skipped: {} is not set", testing::REDIS_URL_VAR);
        return;
    };
    let clock = Arc::new(OffsetClock::default());
    let prefix = prefix();
    let policy = ThrottlePolicy {
        max_failures: 3,
        base_lockout: Duration::from_secs(10),
    };
    let first = RedisFailureThrottle::connect(&url, &prefix, policy, clock.clone())
        .await
        .unwrap();
    let second = RedisFailureThrottle::connect(&url, &prefix, policy, clock.clone())
        .await
        .unwrap();
    assert_eq!(first.attempt("account:ada").await, None);
    assert_eq!(second.attempt("account:ada").await, None);
    assert_eq!(first.blocked_for("account:ada").await, None);
    // The third attempt is counted and locks the key for 10 s, on both replicas.
    assert_eq!(second.attempt("account:ada").await, None);
    let blocked = first.attempt("account:ada").await.expect("locked out");
    assert!(
        blocked > Duration::from_secs(9) && blocked <= Duration::from_secs(10),
        "{blocked:?}"
    );
    assert!(second.blocked_for("account:ada").await.is_some());
    assert_eq!(first.blocked_for("account:bob").await, None, "other keys are free");
    // After the lockout, the next failure locks it again for twice as long.
    clock.advance(Duration::from_secs(11));
    assert_eq!(second.blocked_for("account:ada").await, None);
    second.record_failure("account:ada").await;
    let again = first.blocked_for("account:ada").await.expect("locked again");
    assert!(
        again > Duration::from_secs(19) && again <= Duration::from_secs(20),
        "{again:?}"
    );
    // A success forgets the key.
    first.reset("account:ada").await;
    assert_eq!(second.attempt("account:ada").await, None);
}
