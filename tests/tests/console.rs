//! The admin console in a real browser: headless Chromium driven through WebDriver
//! (chromedriver), against the app listening on a loopback port, with the archive simulator and
//! Cyrus. Every page is kept as a screenshot at 1280 and 390 px under
//! `target/console-screenshots`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use archiver_tests::{App, SourceSimulator};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::pipeline::{CONNECTOR, MAPPING, TOKEN, admin, builder, create_connector, the_day};
use crate::util::Jmap;

const WIDE: (u32, u32) = (1280, 900);
const NARROW: (u32, u32) = (390, 844);
/// How long a page may take to show what a step waits for.
const PATIENCE: Duration = Duration::from_secs(60);

/// Chromium under chromedriver, stopped when dropped.
struct Browser {
    client: Client,
    driver: Child,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Already gone: nothing to stop.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    async fn start() -> Browser {
        let driver_path = std::env::var("CHROMEDRIVER").unwrap_or("/usr/bin/chromedriver".into());
        let port = free_port();
        let driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{driver_path}: {e} (scripts/test installs chromium-driver)")
            });
        let mut options = serde_json::Map::new();
        options.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": std::env::var("CHROMIUM").unwrap_or("/usr/bin/chromium".into()),
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                    "--disable-gpu", "--window-size=1280,900", "--lang=en-US"],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let mut last = None;
        for _ in 0..100 {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(options.clone())
                .connect(&url)
                .await
            {
                Ok(client) => return Browser { client, driver },
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver at {url} did not start a browser: {last:?}");
    }

    async fn open(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// Waits for an element matching `css`.
    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
    }

    /// Waits until the page's main text contains `text`, and returns that text.
    async fn wait_for_text(&self, text: &str) -> String {
        self.wait_until(text, |shown| shown.contains(text)).await
    }

    /// Waits until the page's main text passes `check` (described by `what`), and returns it.
    async fn wait_until(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let started = std::time::Instant::now();
        loop {
            let shown = self.main_text().await;
            if check(&shown) {
                return shown;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "the page never showed {what:?}; it shows:\n{shown}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn main_text(&self) -> String {
        match self.client.find(Locator::Css("main")).await {
            Ok(main) => main.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    async fn heading(&self) -> String {
        match self.client.find(Locator::Css("main h1")).await {
            Ok(heading) => heading.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Waits until the page's heading is `expected` (pages change after a click).
    async fn wait_heading(&self, expected: &str) {
        let started = std::time::Instant::now();
        loop {
            let heading = self.heading().await;
            if heading == expected {
                return;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "the page's heading is {heading:?}, not {expected:?}:\n{}",
                self.main_text().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap();
    }

    async fn click_text(&self, text: &str) {
        let xpath = format!(
            "//main//*[self::button or self::a][normalize-space()={}]",
            xpath_literal(text)
        );
        self.client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::XPath(&xpath))
            .await
            .unwrap_or_else(|e| panic!("no button or link {text:?}: {e}"))
            .click()
            .await
            .unwrap();
    }

    async fn type_into(&self, css: &str, text: &str) {
        let input = self.find(css).await;
        input.clear().await.unwrap();
        input.send_keys(text).await.unwrap();
    }

    /// Sets a date input's value: typing into a date picker depends on the browser's locale.
    async fn set_value(&self, css: &str, value: &str) {
        self.find(css).await;
        self.client
            .execute(
                "document.querySelector(arguments[0]).value = arguments[1];",
                vec![json!(css), json!(value)],
            )
            .await
            .unwrap();
    }

    /// Runs `script` in the page and returns its value.
    async fn eval(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Keeps a screenshot of the page at both widths under `target/console-screenshots`.
    async fn screenshots(&self, name: &str) {
        let folder = screenshot_folder();
        for (width, height) in [WIDE, NARROW] {
            self.client.set_window_size(width, height).await.unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
            let png = self.client.screenshot().await.unwrap();
            assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
            std::fs::write(folder.join(format!("{name}-{width}.png")), png).unwrap();
        }
        self.client.set_window_size(WIDE.0, WIDE.1).await.unwrap();
    }

    /// The whole of a long page at 1280 px (README shows it).
    async fn tall_screenshot(&self, name: &str) {
        self.client.set_window_size(WIDE.0, 2400).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(screenshot_folder().join(format!("{name}.png")), png).unwrap();
        self.client.set_window_size(WIDE.0, WIDE.1).await.unwrap();
    }

    async fn sign_in(&self, origin: &str) {
        self.open(&format!("{origin}/")).await;
        self.type_into("#admin-token", TOKEN).await;
        self.click_text("Sign in").await;
        self.find("#nav:not([hidden])").await;
    }
}

fn xpath_literal(text: &str) -> String {
    if text.contains('\'') {
        format!("\"{text}\"")
    } else {
        format!("'{text}'")
    }
}

fn screenshot_folder() -> PathBuf {
    let folder = archiver_tests::project_root().join("target/console-screenshots");
    std::fs::create_dir_all(&folder).unwrap();
    folder
}

/// The app listening on a loopback port, reading `source`, delivering to the test Cyrus.
fn console_app(source: &SourceSimulator) -> (App, String) {
    let app = builder(
        source,
        "http://127.0.0.1:18080",
        crate::util::JMAP_SESSION_URL,
    )
    .build()
    .unwrap();
    let origin = app.listen_origin().expect("the app listens").to_string();
    (app, origin)
}

/// A name of this test run: the mail store outlives a run, and a copy whose Message-ID it holds
/// already would be skipped as a duplicate.
fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

fn write_file(name: &str, text: &str) -> PathBuf {
    let folder = std::env::temp_dir().join(format!("console-{}", std::process::id()));
    std::fs::create_dir_all(&folder).unwrap();
    let path = folder.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The source ids in a top-level folder of `account`.
async fn folder_source_ids(jmap: &Jmap, account: &str, folder: &str) -> Vec<String> {
    let mailboxes = jmap
        .call(
            "Mailbox/get",
            json!({ "accountId": account, "ids": null, "properties": ["id", "name", "parentId"] }),
        )
        .await;
    let Some(id) = mailboxes["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == folder && m["parentId"].is_null())
        .map(|m| m["id"].clone())
    else {
        return Vec::new();
    };
    let ids = jmap
        .call(
            "Email/query",
            json!({ "accountId": account, "filter": { "inMailbox": id }, "limit": 100 }),
        )
        .await;
    let emails = jmap
        .call(
            "Email/get",
            json!({ "accountId": account, "ids": ids["ids"],
                "properties": ["header:X-Archive-Source-Id:asText"] }),
        )
        .await;
    let mut found: Vec<String> = emails["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["header:X-Archive-Source-Id:asText"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    found.sort();
    found
}

async fn connectors(app: &App) -> Value {
    admin(
        app,
        "GET",
        "/api/connectors",
        "application/json",
        String::new(),
    )
    .await
}

/// Goes through the wizard's first two steps with these archive credentials.
async fn wizard_to_mapping(browser: &Browser, origin: &str, source: &SourceSimulator, id: &str) {
    browser.open(&format!("{origin}/#/new/1")).await;
    browser
        .wait_heading("New connector: terms of service")
        .await;
    browser.click("#accept-terms").await;
    browser.click_text("Next").await;
    login_step(browser, source, id, "archive-password").await;
    browser.wait_heading("New connector: user mapping").await;
}

async fn login_step(browser: &Browser, source: &SourceSimulator, id: &str, password: &str) {
    browser.wait_for_text("Archive password").await;
    browser.type_into("#display-name", "AT&T Network").await;
    browser.type_into("#connector-id", id).await;
    browser.type_into("#source-url", &source.base_url()).await;
    browser.type_into("#username", "att-admin").await;
    browser.type_into("#password", password).await;
    browser.click_text("Check and continue").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_wizard_creates_a_connector_that_archives_a_day_into_the_mailboxes() {
    let jmap = Jmap::connect().await;
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    let expected = the_day(&source);
    let (app, origin) = console_app(&source);
    let browser = Browser::start().await;
    let folder = &unique("Console Archive");
    let id = &unique("att-console");

    browser.open(&format!("{origin}/")).await;
    browser.wait_heading("Sign in").await;
    browser.screenshots("sign-in").await;
    browser.sign_in(&origin).await;
    browser.wait_heading("Connectors").await;
    browser.wait_for_text("No connector yet").await;

    browser.click_text("New connector").await;
    browser
        .wait_heading("New connector: terms of service")
        .await;
    let next = browser.find("form button[type=submit]").await;
    assert!(
        !next.is_enabled().await.unwrap(),
        "Next waits for the terms"
    );
    browser.screenshots("wizard-1-terms").await;
    browser.click("#accept-terms").await;
    browser.click_text("Next").await;

    browser
        .wait_heading("New connector: log in to the archive")
        .await;
    browser.screenshots("wizard-2-login").await;
    login_step(&browser, &source, id, "archive-password").await;

    browser.wait_for_text("Automatic mapping").await;
    browser.wait_heading("New connector: user mapping").await;
    let mapping = write_file("mapping.csv", MAPPING);
    browser
        .find("#mapping-file")
        .await
        .send_keys(mapping.to_str().unwrap())
        .await
        .unwrap();
    let preview = browser.wait_for_text("rows will apply").await;
    assert!(preview.contains("4 rows will apply"), "{preview}");
    assert!(preview.contains("carol@acme.example"), "{preview}");
    browser.type_into("#folder", folder).await;
    browser.screenshots("wizard-3-mapping").await;
    browser.click_text("Next").await;

    browser.wait_heading("New connector: review").await;
    let review = browser.main_text().await;
    for shown in [id, "mapping.csv: 4 rows", folder, "AT&T Network"] {
        assert!(review.contains(shown), "review lacks {shown:?}:\n{review}");
    }
    assert!(
        !review.contains("archive-password"),
        "the review shows the password"
    );
    browser.screenshots("wizard-4-review").await;
    assert_eq!(
        connectors(&app).await["connectors"],
        json!([]),
        "saved before the review"
    );
    browser.click("#create-connector").await;

    browser.wait_for_text("is created").await;
    browser.wait_heading("New connector: finish").await;
    browser.screenshots("wizard-5-finish").await;
    let saved = admin(
        &app,
        "GET",
        &format!("/api/connectors/{id}"),
        "",
        String::new(),
    )
    .await;
    assert_eq!(saved["folder"], folder.as_str());
    assert_eq!(saved["automatic_mapping"], true);

    browser.set_value("#backfill-since", "2026-11-24").await;
    browser.set_value("#backfill-until", "2026-11-25").await;
    browser.click("#backfill").await;
    browser.find("#not-imported-filter").await;
    browser.wait_for_text("2026-11-25").await;
    app.settle().await;

    for (user, ids) in &expected {
        let found = folder_source_ids(&jmap, user, folder).await;
        assert_eq!(&found, ids, "{user}'s {folder}");
    }
    let status = admin(
        &app,
        "GET",
        &format!("/api/connectors/{id}/status"),
        "",
        String::new(),
    )
    .await;
    let day = status["days"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["day"] == "2026-11-25")
        .expect("the day's figures")
        .clone();
    let figures = &day;
    let expected_row = format!(
        "2026-11-25 {} {} {} {} {} {} {} {} holds",
        figures["fetched"],
        figures["invalid"],
        figures["unmapped"],
        figures["available_for_import"],
        figures["imported"],
        figures["partially_imported"],
        figures["skipped_duplicate"],
        figures["failed"]
    );
    assert!(figures["imported"].as_u64().unwrap() > 0, "{status}");
    // The page shows the API's figures for the day once its polling has caught up.
    browser
        .wait_until(&expected_row, |shown| {
            shown
                .lines()
                .any(|line| line.split_whitespace().collect::<Vec<_>>().join(" ") == expected_row)
        })
        .await;
    browser.screenshots("connector").await;
    browser.tall_screenshot("connector-whole").await;

    browser.click_text("Edit").await;
    browser.wait_heading("Edit AT&T Network").await;
    browser.screenshots("connector-edit").await;
    browser.click_text("Cancel").await;
    browser.click("#nav a[href='#/connectors']").await;
    browser.wait_for_text("AT&T Network").await;
    browser.screenshots("connectors").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mapping_file_with_errors_is_shown_by_line_and_column_and_nothing_is_saved() {
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    let (app, origin) = console_app(&source);
    let browser = Browser::start().await;
    browser.sign_in(&origin).await;
    wizard_to_mapping(&browser, &origin, &source, "att-bad-mapping").await;

    let bad = write_file(
        "bad.csv",
        "phone,email\n+12025550101,alice@acme.example\nnot-a-number,bob@acme.example\n+12025550103,not-an-email\n",
    );
    browser
        .find("#mapping-file")
        .await
        .send_keys(bad.to_str().unwrap())
        .await
        .unwrap();
    let errors = browser.find("#mapping-errors").await.text().await.unwrap();
    assert!(errors.contains("nothing was saved"), "{errors}");
    let lines: Vec<&str> = errors.lines().collect();
    assert!(
        lines.iter().any(|l| l.starts_with("3 1 ")),
        "line 3, column 1 (the number):\n{errors}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("4 2 ")),
        "line 4, column 2 (the email):\n{errors}"
    );
    let next = browser.find("form button[type=submit]").await;
    assert!(
        !next.is_enabled().await.unwrap(),
        "a refused file blocks the wizard"
    );
    browser.screenshots("wizard-3-mapping-errors").await;
    assert_eq!(connectors(&app).await["connectors"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_archive_password_is_shown_and_nothing_is_saved() {
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    let (app, origin) = console_app(&source);
    let browser = Browser::start().await;
    browser.sign_in(&origin).await;
    browser.open(&format!("{origin}/#/new/1")).await;
    browser.click("#accept-terms").await;
    browser.click_text("Next").await;
    login_step(&browser, &source, "att-wrong", "not-the-password").await;
    let alert = browser.wait_for_text("did not accept").await;
    browser
        .wait_heading("New connector: log in to the archive")
        .await;
    assert!(
        alert.contains("refused the username or password"),
        "the archive's refusal in words:\n{alert}"
    );
    assert!(!alert.contains("not-the-password"), "the password is shown");
    browser.screenshots("wizard-2-login-refused").await;
    assert_eq!(connectors(&app).await["connectors"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_started_elsewhere_is_followed_on_the_connector_page_without_reload() {
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    the_day(&source);
    let (app, origin) = console_app(&source);
    let connector = &unique("att-follow");
    // A folder of its own: the pipeline's day test counts what the default folder holds.
    let body = json!({ "display_name": "AT&T", "network": "AT&T",
        "source_url": source.base_url(), "username": "att-admin",
        "password": "archive-password", "automatic_mapping": true,
        "folder": unique("Console Follow") });
    admin(
        &app,
        "PUT",
        &format!("/api/connectors/{connector}"),
        "application/json",
        body.to_string(),
    )
    .await;
    admin(
        &app,
        "PUT",
        &format!("/api/connectors/{connector}/mapping"),
        "text/csv",
        MAPPING.into(),
    )
    .await;
    let browser = Browser::start().await;
    browser.sign_in(&origin).await;
    browser
        .open(&format!("{origin}/#/connectors/{connector}"))
        .await;
    browser.wait_for_text("No day has texts yet").await;
    browser
        .eval("window.__same_page = true; return true;")
        .await;

    let window = json!({ "since": "2026-11-25T00:00:00Z", "until": "2026-11-26T00:00:00Z" });
    admin(
        &app,
        "POST",
        &format!("/api/connectors/{connector}/runs"),
        "application/json",
        window.to_string(),
    )
    .await;
    app.settle().await;
    let status = admin(
        &app,
        "GET",
        &format!("/api/connectors/{connector}/status"),
        "",
        String::new(),
    )
    .await;
    let imported = status["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["imported"].as_u64().unwrap())
        .sum::<u64>();
    assert!(imported > 0, "{status}");
    let run = status["runs"][0]["id"].as_str().unwrap().to_string();
    let figures = &status["runs"][0]["figures"];
    let expected = format!(
        "{} {} {}",
        figures["fetched"], figures["imported"], figures["failed"]
    );
    // The page, never reloaded, follows the run to its end and shows the API's figures.
    browser
        .wait_until(&format!("{run} succeeded ... {expected}"), |shown| {
            shown.contains("No run is in progress")
                && shown.contains("2026-11-25")
                && shown.lines().any(|l| {
                    l.starts_with(&run) && l.contains("succeeded") && l.contains(&expected)
                })
        })
        .await;
    assert_eq!(
        browser.eval("return window.__same_page === true;").await,
        json!(true),
        "the page was reloaded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_session_the_console_signs_in_and_the_api_answers_401() {
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    let (_app, origin) = console_app(&source);
    let browser = Browser::start().await;
    browser.open(&format!("{origin}/#/connectors")).await;
    browser.wait_heading("Sign in").await;
    let answer = browser
        .eval("return fetch('/api/connectors').then((r) => r.status);")
        .await;
    assert_eq!(answer, json!(401));

    browser.type_into("#admin-token", "not-the-token").await;
    browser.click_text("Sign in").await;
    browser.wait_for_text("That is not the admin token").await;
    browser.wait_heading("Sign in").await;

    browser.sign_in(&origin).await;
    let after = browser
        .eval(
            "return fetch('/api/connectors').then((r) => ({ status: r.status, \
             cookie: document.cookie, stored: localStorage.length + sessionStorage.length, \
             url: location.href }));",
        )
        .await;
    assert_eq!(after["status"], 200);
    assert!(
        !after["cookie"]
            .as_str()
            .unwrap()
            .contains("archiver_session"),
        "the session cookie is readable by scripts"
    );
    assert_eq!(after["stored"], 0, "something was kept in web storage");
    assert!(!after["url"].as_str().unwrap().contains(TOKEN));
    let cookies = browser.client.get_all_cookies().await.unwrap();
    let session = cookies
        .iter()
        .find(|c| c.name() == "archiver_session")
        .expect("a session cookie");
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(
        session.same_site().map(|s| s.to_string()),
        Some("Strict".to_string())
    );
    assert!(!session.value().contains(TOKEN));

    browser.click("#sign-out").await;
    browser.wait_for_text("Signed out").await;
    let answer = browser
        .eval("return fetch('/api/connectors').then((r) => r.status);")
        .await;
    assert_eq!(answer, json!(401), "signing out ends the session");
}

/// A page on another origin of the same host (same site for the browser, so a `SameSite`
/// cookie alone would not stop it) with a form that posts to the app.
async fn other_site(target: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let page = format!(
        "<!doctype html><form id=f method=post enctype=text/plain action=\"{target}\">\
         <input name='{{\"since\":\"2026-11-25T00:00:00Z\",\"x\":\"' value='\"}}'>\
         <button id=go>go</button></form>"
    );
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let page = page.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request| {
                    let page = page.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "text/html")
                                .body(http_body_util::Full::new(bytes::Bytes::from(page)))
                                .unwrap(),
                        )
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    origin
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cross_site_post_with_the_session_cookie_is_refused() {
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    let (app, origin) = console_app(&source);
    create_connector(&app, &source, CONNECTOR).await;
    let browser = Browser::start().await;
    browser.sign_in(&origin).await;

    let elsewhere = other_site(format!("{origin}/api/connectors/{CONNECTOR}/runs")).await;
    browser.open(&format!("{elsewhere}/")).await;
    browser.click("#go").await;
    let started = std::time::Instant::now();
    let answer = loop {
        let text = browser
            .client
            .find(Locator::Css("body"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap_or_default();
        if text.contains("error") || started.elapsed() > PATIENCE {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(answer.contains("cross-site request refused"), "{answer}");
    let runs = admin(
        &app,
        "GET",
        &format!("/api/connectors/{CONNECTOR}/runs"),
        "",
        String::new(),
    )
    .await;
    assert_eq!(
        runs["runs"],
        json!([]),
        "a run was started from another site"
    );

    // The console's own requests still go through.
    browser
        .open(&format!("{origin}/#/connectors/{CONNECTOR}"))
        .await;
    browser.click_text("Disable").await;
    browser.wait_for_text("Disabled").await;
    let connector = admin(
        &app,
        "GET",
        &format!("/api/connectors/{CONNECTOR}"),
        "",
        String::new(),
    )
    .await;
    assert_eq!(connector["enabled"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn markup_from_outside_is_shown_as_text() {
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    let (app, origin) = console_app(&source);
    let hostile = "<img src=x onerror=alert(1)>";
    let body = json!({ "display_name": hostile, "network": "AT&T <b>bold</b>",
        "source_url": source.base_url(), "username": "att-admin",
        "password": "archive-password", "automatic_mapping": true });
    admin(
        &app,
        "PUT",
        "/api/connectors/att-hostile",
        "application/json",
        body.to_string(),
    )
    .await;
    let browser = Browser::start().await;
    browser.sign_in(&origin).await;
    let shown = browser.wait_for_text(hostile).await;
    assert!(shown.contains("AT&T <b>bold</b>"), "{shown}");
    browser.click_text(hostile).await;
    browser.wait_heading(hostile).await;
    let injected = browser
        .eval("return document.querySelectorAll('main img, main b').length;")
        .await;
    assert_eq!(injected, json!(0), "markup from the API became elements");
    assert!(
        browser.client.get_alert_text().await.is_err(),
        "a script from the API ran"
    );
    browser.screenshots("connector-hostile-name").await;
}
