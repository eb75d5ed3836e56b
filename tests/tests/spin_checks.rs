//! The test host refuses at start-up what Spin 3.5 and its cron trigger refuse: the project's
//! own `spin.toml` passes every check, and each check refuses a manifest Spin refuses.

use archiver_tests::manifest::Manifest;
use archiver_tests::{App, project_root};

fn own_manifest() -> String {
    std::fs::read_to_string(project_root().join("spin.toml")).unwrap()
}

/// The project's manifest with `from` replaced by `to`: the error the host gives loading it.
fn refusal(from: &str, to: &str) -> String {
    let text = own_manifest();
    assert!(text.contains(from), "the manifest has {from:?}");
    let changed = text.replacen(from, to, 1);
    match Manifest::parse(&changed, &project_root()) {
        Ok(_) => panic!("a manifest with {to:?} instead of {from:?} was accepted"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn the_projects_manifest_passes_every_check() {
    let manifest = Manifest::parse(&own_manifest(), &project_root()).unwrap();
    assert_eq!(manifest.cron_triggers.len(), 1);
    assert_eq!(manifest.cron_triggers[0].component, "archive-timer");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_projects_app_starts_with_its_variables_and_sources() {
    App::builder("spin.toml")
        .variable("admin_token", "a")
        .variable("timer_token", "t")
        .variable("staging_key", "00".repeat(32))
        .variable("jmap_password", "p")
        .build()
        .unwrap();
}

#[test]
fn a_cron_component_that_chains_is_refused_as_spin_refuses_it() {
    let error = refusal(
        r#"allowed_outbound_hosts = ["{{ app_origin }}"]"#,
        r#"allowed_outbound_hosts = ["{{ app_origin }}", "http://archive-fetch.spin.internal"]"#,
    );
    assert!(
        error.contains(
            "This application requires the following features that are not available in this \
             version of the 'cron' trigger: local_service_chaining"
        ),
        "{error}"
    );
    // The same for a wildcard chaining entry, and for the fetch component on the cron trigger.
    let error = refusal(
        r#"allowed_outbound_hosts = ["{{ app_origin }}"]"#,
        r#"allowed_outbound_hosts = ["http://*.spin.internal"]"#,
    );
    assert!(error.contains("'cron' trigger"), "{error}");
    let error = refusal(
        "component = \"archive-timer\"\ncron_expression",
        "component = \"archive-fetch\"\ncron_expression",
    );
    assert!(error.contains("local_service_chaining"), "{error}");
}

#[test]
fn a_cron_expression_the_cron_trigger_cannot_parse_is_refused() {
    for bad in ["0 2 * * *", "0 0 25 * * *", "0 0 2 * * * * *", "every day"] {
        let error = refusal("\"0 0 2 * * *\"", &format!("{bad:?}"));
        assert!(error.contains("cron expression"), "{bad}: {error}");
    }
}

#[test]
fn fields_spin_does_not_know_are_refused() {
    for (from, to) in [
        ("[application]\n", "[application]\nowner = \"x\"\n"),
        (
            "[component.archive-timer]\n",
            "[component.archive-timer]\nallowed_hosts = []\n",
        ),
        (
            "component = \"archive-timer\"\n",
            "component = \"archive-timer\"\nschedule = \"daily\"\n",
        ),
        ("route = \"/...\"\n", "route = \"/...\"\nmethod = \"GET\"\n"),
        (
            "spin_manifest_version = 2\n",
            "spin_manifest_version = 2\nname = \"x\"\n",
        ),
        (
            "timer_retry_seconds = { default = \"60\" }",
            "timer_retry_seconds = { default = \"60\", type = \"int\" }",
        ),
    ] {
        let error = refusal(from, to);
        assert!(error.contains("unknown field"), "{to}: {error}");
    }
}

#[test]
fn bad_names_and_labels_are_refused() {
    let error = refusal("[component.archive-timer]\n", "[component.9-timer]\n");
    assert!(error.contains("kebab-case"), "{error}");
    let error = refusal("timer_retry_seconds = { default", "Timer-Retry = { default");
    assert!(error.contains("lower_snake_case"), "{error}");
    let error = refusal(
        "key_value_stores = [\"default\"]\nallowed_outbound_hosts = [\"{{ app_origin }}\"]",
        "key_value_stores = [\"Default Store\"]\nallowed_outbound_hosts = [\"{{ app_origin }}\"]",
    );
    assert!(error.contains("label"), "{error}");
    let error = refusal(
        "app_origin = \"{{ app_origin }}\"",
        "app_origin = \"{{ app_orign }}\"",
    );
    assert!(error.contains("app_orign"), "{error}");
}

/// An app of the project's components whose manifest differs from the project's: loaded by the
/// host from a file beside the real one (so sources resolve alike).
fn start_changed(from: &str, to: &str) -> anyhow::Error {
    let text = own_manifest();
    assert!(text.contains(from));
    let path = project_root().join(format!("target/spin-check-{}.toml", std::process::id()));
    let changed = text
        .replacen(from, to, 1)
        .replace("source = \"target/", "source = \"../target/");
    std::fs::write(&path, changed).unwrap();
    let result = App::builder(&path)
        .variable("admin_token", "a")
        .variable("timer_token", "t")
        .variable("staging_key", "00".repeat(32))
        .variable("jmap_password", "p")
        .build();
    std::fs::remove_file(&path).unwrap();
    match result {
        Ok(_) => panic!("an app with {to:?} instead of {from:?} started"),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn start_up_refuses_a_missing_source_an_unknown_store_a_bad_host_and_a_missing_secret() {
    let error = start_changed("archive_timer.wasm", "archive_nothing.wasm");
    assert!(format!("{error:#}").contains("does not exist"), "{error:#}");
    let error = start_changed(
        "[component.archive-timer]\nsource = \"target/wasm32-wasip2/release/archive_timer.wasm\"\nkey_value_stores = [\"default\"]",
        "[component.archive-timer]\nsource = \"target/wasm32-wasip2/release/archive_timer.wasm\"\nkey_value_stores = [\"archive\"]",
    );
    assert!(
        format!("{error:#}").contains("unknown key_value_stores label \"archive\""),
        "{error:#}"
    );
    let error = start_changed(
        "app_origin = { default = \"http://127.0.0.1:3000\" }",
        "app_origin = { default = \"127.0.0.1:3000/api\" }",
    );
    assert!(format!("{error:#}").contains("scheme"), "{error:#}");
    let error = start_changed(
        "app_origin = { default = \"http://127.0.0.1:3000\" }",
        "app_origin = { required = true }",
    );
    assert!(format!("{error:#}").contains("app_origin"), "{error:#}");
}
