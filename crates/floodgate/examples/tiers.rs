//! SaaS API tiering in one process: a free tier (`5/s burst 10; 1000/day`) and an
//! enterprise tier (`100/s burst 200`) under the same burst of traffic.
//!
//! Run with `cargo run --release -p floodgate --example tiers`.

use std::time::Duration;

use floodgate::{Decision, Policy, RateLimiter};

fn describe(d: &Decision) -> String {
    if d.is_allowed() {
        format!("allowed  remaining {:>3} of {}", d.remaining(), d.limit())
    } else {
        format!(
            "denied   retry in {:?} (limit #{})",
            d.retry_after(),
            d.decided_by()
        )
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), floodgate::Error> {
    let free = Policy::parse("free", "5/s burst 10; 1000/day")?;
    let enterprise = Policy::parse("enterprise", "100/s burst 200")?;
    let limiter = RateLimiter::in_memory();

    println!("free tier [{free}]: a burst of 15 requests from user:42");
    for i in 1..=15 {
        let d = limiter.check(&free, "user:42").await?;
        println!("  request {i:>2}: {}", describe(&d));
    }

    println!("\nenterprise tier [{enterprise}]: a burst of 250 requests from acme");
    let mut allowed = 0;
    let mut last = None;
    for _ in 0..250 {
        let d = limiter.check(&enterprise, "acme").await?;
        allowed += u32::from(d.is_allowed());
        last = Some(d);
    }
    println!("  {allowed} allowed, {} denied", 250 - allowed);
    if let Some(d) = last {
        println!("  last request: {}", describe(&d));
    }

    println!("\none second later, tokens have refilled at each tier's sustained rate:");
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (policy, key) in [(&free, "user:42"), (&enterprise, "acme")] {
        let mut allowed = 0;
        while limiter.check(policy, key).await?.is_allowed() {
            allowed += 1;
        }
        println!("  {:<10} {allowed} more allowed", policy.name());
    }

    println!("\nbackground jobs wait instead of failing (until_ready):");
    let mailer = Policy::parse("mailer", "4/s burst 1")?;
    let start = std::time::Instant::now();
    for job in 1..=5 {
        limiter.until_ready(&mailer, "smtp", 1).await?;
        println!("  job {job} sent at {:>4} ms", start.elapsed().as_millis());
    }
    Ok(())
}
