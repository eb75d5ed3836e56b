//! `spin.toml` agrees with the workspace and grants each component only what it needs.

use std::collections::BTreeSet;

use archiver_tests::{read_toml, template_names};
use toml::{Table, Value};

const COMPONENTS: [&str; 4] = [
    "archive-fetch",
    "archive-setup",
    "archive-import",
    "archive-timer",
];

fn manifest() -> Table {
    read_toml("spin.toml").expect("spin.toml")
}

fn component<'a>(manifest: &'a Table, id: &str) -> &'a Table {
    manifest["component"][id]
        .as_table()
        .unwrap_or_else(|| panic!("component {id} is declared"))
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn triggers<'a>(manifest: &'a Table, kind: &str) -> Vec<&'a Table> {
    manifest["trigger"][kind]
        .as_array()
        .map(|items| items.iter().filter_map(Value::as_table).collect())
        .unwrap_or_default()
}

#[test]
fn every_workspace_component_is_declared_with_its_source_and_build() {
    let workspace = read_toml("Cargo.toml").unwrap();
    let members: BTreeSet<String> = strings(workspace["workspace"].get("members"))
        .into_iter()
        .filter_map(|m| m.strip_prefix("components/").map(str::to_string))
        .filter(|m| m != "archiver-core" && m != "archive-host")
        .collect();
    let manifest = manifest();
    let declared: BTreeSet<String> = manifest["component"]
        .as_table()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(members, declared);
    assert_eq!(declared, COMPONENTS.iter().map(|c| c.to_string()).collect());
    for id in COMPONENTS {
        let c = component(&manifest, id);
        let artifact = id.replace('-', "_");
        assert_eq!(
            c["source"].as_str(),
            Some(format!("target/wasm32-wasip2/release/{artifact}.wasm").as_str())
        );
        assert_eq!(
            c["build"]["command"].as_str(),
            Some(format!("cargo build -p {id} --target wasm32-wasip2 --release").as_str())
        );
    }
}

#[test]
fn triggers_are_the_daily_timer_the_admin_api_and_private_fetch_and_import() {
    let manifest = manifest();
    let cron = triggers(&manifest, "cron");
    assert_eq!(cron.len(), 1);
    assert_eq!(cron[0]["component"].as_str(), Some("archive-timer"));
    let expression = cron[0]["cron_expression"].as_str().unwrap();
    assert_eq!(
        expression, "0 0 2 * * *",
        "daily at 02:00:00, seconds first"
    );

    let http = triggers(&manifest, "http");
    let route_of = |id: &str| {
        http.iter()
            .find(|t| t["component"].as_str() == Some(id))
            .map(|t| t["route"].clone())
            .unwrap_or_else(|| panic!("{id} has an HTTP trigger"))
    };
    // The admin API under /api/ and the console on every other path.
    assert_eq!(route_of("archive-setup").as_str(), Some("/..."));
    assert_eq!(route_of("archive-import")["private"].as_bool(), Some(true));
    assert_eq!(route_of("archive-fetch")["private"].as_bool(), Some(true));
}

#[test]
fn every_variable_is_declared_once_used_and_secrets_have_no_value_in_the_manifest() {
    let manifest = manifest();
    let declared = manifest["variables"].as_table().unwrap();
    let mut used = BTreeSet::new();
    for id in COMPONENTS {
        let c = component(&manifest, id);
        let mut texts: Vec<String> = strings(c.get("allowed_outbound_hosts"));
        if let Some(bindings) = c.get("variables").and_then(Value::as_table) {
            for (name, value) in bindings {
                let text = value.as_str().unwrap_or_default().to_string();
                assert_eq!(
                    template_names(&text),
                    std::slice::from_ref(name),
                    "{id}.{name} binds its namesake"
                );
                texts.push(text);
            }
        }
        for text in texts {
            for name in template_names(&text) {
                assert!(
                    declared.contains_key(&name),
                    "{id} uses undeclared variable {name}"
                );
                used.insert(name);
            }
        }
    }
    for (name, spec) in declared {
        assert!(
            used.contains(name),
            "variable {name} is declared but no component uses it"
        );
        let spec = spec.as_table().unwrap();
        // A secret's value is never in the manifest: a secret is required, or (the secret of
        // a destination the deployment may not use) empty until set.
        if spec.get("secret").and_then(Value::as_bool) == Some(true) {
            match spec.get("default") {
                None => assert_eq!(
                    spec.get("required").and_then(Value::as_bool),
                    Some(true),
                    "{name}"
                ),
                Some(default) => assert_eq!(
                    default.as_str(),
                    Some(""),
                    "secret {name} must not have a value in the manifest"
                ),
            }
        }
    }
}

#[test]
fn components_get_only_the_store_and_hosts_they_need() {
    let manifest = manifest();
    for id in COMPONENTS {
        let c = component(&manifest, id);
        assert_eq!(strings(c.get("key_value_stores")), ["default"], "{id}");
        for host in strings(c.get("allowed_outbound_hosts")) {
            assert!(
                !host.contains('*'),
                "{id} must not allow a wildcard: {host}"
            );
            if let Some(target) = host
                .strip_prefix("http://")
                .and_then(|h| h.strip_suffix(".spin.internal"))
            {
                assert!(
                    COMPONENTS.contains(&target),
                    "{id} chains to unknown {target}"
                );
                // A run's fetch steps are fresh invocations of archive-fetch, reached from its
                // own run loop; no other component calls itself.
                assert!(
                    target != id || id == "archive-fetch",
                    "{id} chains to itself"
                );
            }
        }
    }
    // The timer runs on the cron trigger, which cannot chain: it may call the app's origin only.
    let timer = component(&manifest, "archive-timer");
    assert_eq!(
        strings(timer.get("allowed_outbound_hosts")),
        ["{{ app_origin }}"]
    );
    assert!(
        http_components(&manifest).all(|id| id != "archive-timer"),
        "the timer is cron-only"
    );
    let import = component(&manifest, "archive-import");
    let import_hosts = strings(import.get("allowed_outbound_hosts"));
    assert!(
        import_hosts.iter().all(|h| !h.contains("source_origin")),
        "import talks to mailboxes, never to the archive source"
    );
}

fn http_components(manifest: &Table) -> impl Iterator<Item = String> + '_ {
    triggers(manifest, "http")
        .into_iter()
        .filter_map(|t| t["component"].as_str().map(str::to_string))
}

#[test]
fn the_core_library_does_not_depend_on_spin() {
    let core = read_toml("components/archiver-core/Cargo.toml").unwrap();
    for section in ["dependencies", "dev-dependencies"] {
        if let Some(deps) = core.get(section).and_then(Value::as_table) {
            for name in deps.keys() {
                assert!(
                    !name.starts_with("spin"),
                    "archiver-core must not depend on {name}"
                );
            }
        }
    }
}
