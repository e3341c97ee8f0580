//! `GET /dashboard` in a real headless browser (Debian's `chromium`): the page shows the
//! policies, a live rate that changes, the most-denied keys as text (an HTML-shaped key
//! stays text), no console errors, no sideways scroll at 1280 and 390 px; with an admin
//! token it shows no data until the token is given. Screenshots land in
//! `target/dashboard-*.png` (not committed by the run).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common;

use common::{TempDir, get, post, request, server_with};

const HOSTILE: &str = "<img src=x onerror=window.__pwned=1>";

fn chromium() -> PathBuf {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("Debian's chromium is needed: apt-get install chromium (scripts/setup installs it)")
}

/// Loads `url` in a fresh headless browser of `width`×`height`: the DOM once its scripts
/// have run (`--dump-dom`), or a screenshot to `png`; and the browser's log.
async fn browse(url: &str, width: u32, height: u32, png: Option<&Path>) -> (String, String) {
    let profile = TempDir::new("chromium-profile");
    let mut command = tokio::process::Command::new(chromium());
    command
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--window-size={width},{height}"))
        .kill_on_drop(true);
    match png {
        Some(path) => command.arg(format!("--screenshot={}", path.display())),
        None => command.arg("--dump-dom"),
    };
    let output = tokio::time::timeout(Duration::from_secs(90), command.arg(url).output())
        .await
        .expect("the browser finished within 90 s")
        .expect("the browser ran");
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Waits until `/v1/stats` (with `auth`) has sampled `denied` denials of `policy`.
async fn sampled(addr: std::net::SocketAddr, auth: &[(&str, &str)], policy: &str, denied: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let json = request(addr, "GET", "/v1/stats", auth, b"").await.json();
        let seen: u64 = json["policies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["name"] == policy)
            .flat_map(|p| {
                p["denied_per_second"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|v| v.as_u64())
            .sum();
        if seen >= denied {
            return;
        }
        assert!(Instant::now() < deadline, "not sampled: {json}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The `points` of the page's first chart line.
fn first_line(dom: &str) -> String {
    dom.split("<polyline points=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default()
        .to_owned()
}

async fn traffic(addr: std::net::SocketAddr, attacker: usize) {
    for _ in 0..attacker {
        post(addr, "/v1/check", r#"{"policy":"free","key":"attacker"}"#).await;
    }
    let hostile = serde_json::json!({ "policy": "free", "key": HOSTILE }).to_string();
    for _ in 0..3 {
        post(addr, "/v1/check", &hostile).await;
    }
    for n in 0..5 {
        post(
            addr,
            "/v1/check",
            &format!(r#"{{"policy":"free","key":"user:{n}"}}"#),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_live_rates_and_denied_keys_as_text() {
    let dir = TempDir::new("dashboard");
    let server = server_with(
        &dir,
        "[policies]\nfree = \"2/hour\"\npro = \"100/s\"\n[concurrency]\nexports = 2\n",
    )
    .await;
    let addr = server.http_addr();
    let acquired = post(addr, "/v1/acquire", r#"{"policy":"exports","key":"t"}"#).await;
    assert_eq!(acquired.status, 200, "{acquired:?}");
    // The shell itself holds no data, and is served with a strict policy.
    let shell = get(addr, "/dashboard").await;
    assert_eq!(shell.status, 200);
    assert_eq!(
        shell.header("content-security-policy"),
        Some("default-src 'self'; frame-ancestors 'none'")
    );
    assert_eq!(shell.header("x-content-type-options"), Some("nosniff"));
    assert!(!shell.body.contains("free"), "no data in the shell");
    assert_eq!(
        get(addr, "/dashboard/app.js").await.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );

    // 2/hour per key: the attacker's 8 checks are 6 denials, the hostile key's 3 one.
    traffic(addr, 8).await;
    sampled(addr, &[], "free", 7).await;
    let url = format!("http://{addr}/dashboard");
    let (dom, log) = browse(&url, 1280, 800, None).await;
    assert!(dom.contains("data-policy=\"free\""), "{dom}");
    assert!(
        dom.contains("data-policy=\"pro\"") || dom.contains(">pro<"),
        "{dom}"
    );
    assert!(
        dom.contains("<td class=\"key\">attacker</td>"),
        "the most-denied key: {dom}"
    );
    assert!(
        dom.contains("&lt;img src=x onerror=window.__pwned=1&gt;"),
        "the hostile key shows literally: {dom}"
    );
    assert!(!dom.contains("<img"), "and is never an element: {dom}");
    assert!(dom.contains("data-horizontal-overflow=\"false\""), "{dom}");
    assert!(!log.contains(":CONSOLE("), "no console messages:\n{log}");
    // The concurrency limit: its permit in flight, from /v1/stats.
    assert!(
        dom.contains("<td>exports</td><td class=\"num\">1 of 2</td><td class=\"num\">1</td>"),
        "the concurrency limit's row: {dom}"
    );
    let before = first_line(&dom);
    assert!(!before.is_empty(), "{dom}");

    // More traffic: the chart a few seconds later is another one.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    traffic(addr, 4).await;
    sampled(addr, &[], "free", 7 + 4 + 3).await;
    let (dom, _) = browse(&url, 1280, 800, None).await;
    assert_ne!(
        first_line(&dom),
        before,
        "the rate changed between two readings"
    );

    // A phone-width screen: still no sideways scroll.
    let (dom, log) = browse(&url, 390, 844, None).await;
    assert!(dom.contains("data-horizontal-overflow=\"false\""), "{dom}");
    assert!(!log.contains(":CONSOLE("), "{log}");
    let shots = screenshots();
    for (width, height) in [(1280, 800), (390, 844)] {
        let png = shots.join(format!("dashboard-{width}x{height}.png"));
        browse(&url, width, height, Some(&png)).await;
        assert!(
            std::fs::metadata(&png)
                .map(|m| m.len() > 5_000)
                .unwrap_or(false),
            "{png:?}"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_admin_token_the_dashboard_shows_no_data_until_it_is_given() {
    let dir = TempDir::new("dashboard-token");
    let server = server_with(
        &dir,
        "[server]\nadmin_token = \"dash-token\"\n[policies]\nfree = \"2/hour\"\n",
    )
    .await;
    let addr = server.http_addr();
    traffic(addr, 4).await;
    sampled(addr, &[("authorization", "Bearer dash-token")], "free", 3).await;
    let (dom, _) = browse(&format!("http://{addr}/dashboard"), 1280, 800, None).await;
    assert!(
        dom.contains("<section id=\"login\" class=\"card\">"),
        "the login box shows: {dom}"
    );
    assert!(
        dom.contains("<div id=\"data\" hidden=\"\">"),
        "the data stays hidden: {dom}"
    );
    for data in ["attacker", "data-policy", "user:0"] {
        assert!(!dom.contains(data), "{data} shown without the token: {dom}");
    }
    server.shutdown().await;
}

/// A chromedriver of the test's own (Debian's `chromium-driver`), stopped on drop by its pid.
struct Driver {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl Driver {
    fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        use std::os::unix::process::CommandExt;
        // Its own process group, so the browsers it starts go with it (see `drop`).
        let child = std::process::Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver is needed: apt-get install chromium-driver (scripts/setup installs it)");
        Driver {
            child,
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    async fn call(&self, method: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
        let body = if method == "GET" || method == "DELETE" {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        // chromedriver keeps connections open: read the head, then exactly Content-Length.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body).await.unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        let (status, body) = loop {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "{method} {path}: connection closed");
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&raw).into_owned();
            let Some((head, rest)) = text.split_once("\r\n\r\n") else {
                continue;
            };
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if rest.len() >= length {
                let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
                break (status, rest[..length].to_owned());
            }
        };
        assert_eq!(status, 200, "{method} {path}: {body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["value"].clone()
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(self.addr).await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Ours: the group of the chromedriver we started, by its id.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entering_the_admin_token_shows_the_data_and_keeps_keys_as_text() {
    let dir = TempDir::new("dashboard-login");
    let server = server_with(
        &dir,
        "[server]\nadmin_token = \"dash-token\"\n[policies]\nfree = \"2/hour\"\n",
    )
    .await;
    let addr = server.http_addr();
    traffic(addr, 4).await;
    sampled(addr, &[("authorization", "Bearer dash-token")], "free", 3).await;

    let driver = Driver::start();
    driver.wait_ready().await;
    let profile = TempDir::new("chromedriver-profile");
    let session = driver
        .call(
            "POST",
            "/session",
            serde_json::json!({ "capabilities": { "alwaysMatch": { "goog:chromeOptions": {
                "binary": chromium(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,800",
                         format!("--user-data-dir={}", profile.path().display())],
            } } } }),
        )
        .await;
    let id = session["sessionId"].as_str().unwrap().to_owned();
    let at = |path: &str| format!("/session/{id}{path}");
    driver
        .call(
            "POST",
            &at("/url"),
            serde_json::json!({ "url": format!("http://{addr}/dashboard") }),
        )
        .await;
    let script = |js: &str| serde_json::json!({ "script": js, "args": [] });
    let eventually = |js: &'static str| {
        let (driver, at, script) = (&driver, &at, &script);
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if driver.call("POST", &at("/execute/sync"), script(js)).await == true {
                    return;
                }
                assert!(Instant::now() < deadline, "never true: {js}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    eventually("return !document.getElementById('login').hidden").await;
    let shown = driver
        .call(
            "POST",
            &at("/execute/sync"),
            script("return document.body.innerText"),
        )
        .await;
    assert!(
        !shown.as_str().unwrap().contains("attacker"),
        "no data before the token"
    );
    // Type the token and submit.
    let find = |css: &str| serde_json::json!({ "using": "css selector", "value": css });
    let input = driver.call("POST", &at("/element"), find("#token")).await;
    let input = input
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    driver
        .call(
            "POST",
            &at(&format!("/element/{input}/value")),
            serde_json::json!({ "text": "dash-token" }),
        )
        .await;
    let button = driver
        .call("POST", &at("/element"), find("#login-form button"))
        .await;
    let button = button
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    driver
        .call(
            "POST",
            &at(&format!("/element/{button}/click")),
            serde_json::json!({}),
        )
        .await;
    eventually("return document.getElementById('data').hidden === false").await;
    eventually(
        "return [...document.querySelectorAll('td.key')].some(td => td.textContent === 'attacker')",
    )
    .await;
    eventually(
        "return [...document.querySelectorAll('td.key')].some(td => td.textContent === '<img src=x onerror=window.__pwned=1>')",
    )
    .await;
    let state = driver
        .call(
            "POST",
            &at("/execute/sync"),
            script("return [window.__pwned === undefined, document.querySelectorAll('img').length, \
                    localStorage.length + sessionStorage.length, location.href.includes('dash-token')]"),
        )
        .await;
    assert_eq!(
        state,
        serde_json::json!([true, 0, 0, false]),
        "not pwned, no token kept outside the tab's memory"
    );
    driver.call("DELETE", &at(""), serde_json::json!({})).await;
    server.shutdown().await;
}
