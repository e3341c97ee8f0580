//! The login guard's attack patterns on a real `redis-server` of the test's own, driven by a
//! manual clock through the test-only clock override: without and with the deny cache
//! (which answers repeated denials locally, and must not change a login decision).

use crate::common;

use floodgate::ManualClock;
use floodgate_redis::RedisStore;
use floodgate_testkit::conformance::Case;
use floodgate_testkit::redis_server::RedisServer;

async fn on_a_fresh_server(case: Case<RedisStore<ManualClock>>, deny_cache: usize) {
    let server = RedisServer::start();
    case(common::harness(&server.url(), "login:", deny_cache, true).await).await;
}

async fn without_deny_cache(case: Case<RedisStore<ManualClock>>) {
    on_a_fresh_server(case, 0).await;
}

async fn with_deny_cache(case: Case<RedisStore<ManualClock>>) {
    on_a_fresh_server(case, 1_000).await;
}

mod redis_store {
    floodgate_testkit::login_tests!(super::without_deny_cache);
}

mod redis_store_with_deny_cache {
    floodgate_testkit::login_tests!(super::with_deny_cache);
}
