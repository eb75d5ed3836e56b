//! A Spin application manifest (version 2), read and checked the way `spin up` would.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use toml::{Table, Value};

/// The host feature a component listing a `*.spin.internal` host requires.
const SERVICE_CHAINING: &str = "local_service_chaining";

/// Fields Spin's manifest schema (v2) knows at each level; it refuses any other.
const ROOT_FIELDS: &[&str] = &[
    "spin_manifest_version",
    "application",
    "variables",
    "trigger",
    "component",
];
const APPLICATION_FIELDS: &[&str] = &[
    "name",
    "version",
    "description",
    "authors",
    "targets",
    "trigger",
    "tool",
];
const COMPONENT_FIELDS: &[&str] = &[
    "source",
    "description",
    "variables",
    "environment",
    "files",
    "exclude_files",
    "allowed_http_hosts",
    "allowed_outbound_hosts",
    "key_value_stores",
    "sqlite_databases",
    "ai_models",
    "build",
    "tool",
    "dependencies_inherit_configuration",
    "dependencies",
];
/// Fields of each trigger type's config: Spin's `HttpTriggerConfig` and the cron plugin's
/// `CronTriggerConfig` (both `deny_unknown_fields`), with the manifest's own `id`.
const HTTP_TRIGGER_FIELDS: &[&str] = &["id", "component", "route", "executor", "static_response"];
const CRON_TRIGGER_FIELDS: &[&str] = &["id", "component", "cron_expression"];

fn only_fields(table: &Table, known: &[&str], what: &str) -> anyhow::Result<()> {
    for key in table.keys() {
        ensure!(
            known.contains(&key.as_str()),
            "{what} has unknown field `{key}` (Spin refuses fields it does not know)"
        );
    }
    Ok(())
}

/// Spin's labels (stores, databases): kebab-case or snake_case words, each starting with a
/// letter.
fn is_label(label: &str) -> bool {
    let words: Vec<&str> = label.split(['-', '_']).collect();
    let one_separator = !(label.contains('-') && label.contains('_'));
    one_separator
        && words.iter().all(|word| {
            word.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                && word
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
}

/// An application variable (`[variables]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariableSpec {
    pub default: Option<String>,
    pub required: bool,
    pub secret: bool,
}

/// A component (`[component.<id>]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentSpec {
    pub id: String,
    /// The `.wasm` file, resolved against the manifest's folder.
    pub source: PathBuf,
    pub key_value_stores: Vec<String>,
    /// As written, templates included.
    pub allowed_outbound_hosts: Vec<String>,
    /// Component variable name -> template.
    pub variables: BTreeMap<String, String>,
}

/// Where an HTTP trigger listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `"/path"`: that path only.
    Exact(String),
    /// `"/path/..."`: the path and everything below it; `"/..."` is everything.
    Wildcard(String),
    /// `{ private = true }`: reachable only by local service chaining.
    Private,
}

impl Route {
    fn parse(value: &Value) -> anyhow::Result<Route> {
        if let Some(table) = value.as_table() {
            ensure!(
                table.get("private").and_then(Value::as_bool) == Some(true) && table.len() == 1,
                "a route table must be `{{ private = true }}`"
            );
            return Ok(Route::Private);
        }
        let text = value
            .as_str()
            .context("a route must be a string or `{ private = true }`")?;
        ensure!(text.starts_with('/'), "route {text:?} must start with `/`");
        if text == "/..." {
            return Ok(Route::Wildcard(String::new()));
        }
        if let Some(prefix) = text.strip_suffix("/...") {
            ensure!(
                !prefix.contains("..."),
                "route {text:?} has `...` other than at its end"
            );
            return Ok(Route::Wildcard(prefix.to_string()));
        }
        ensure!(
            !text.contains("..."),
            "route {text:?} has `...` other than at its end"
        );
        Ok(Route::Exact(text.trim_end_matches('/').to_string()))
    }

    /// The route as written in the manifest.
    pub fn as_written(&self) -> String {
        match self {
            Route::Exact(path) if path.is_empty() => "/".into(),
            Route::Exact(path) => path.clone(),
            Route::Wildcard(prefix) => format!("{prefix}/..."),
            Route::Private => "/...".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTrigger {
    pub route: Route,
    pub component: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronTrigger {
    pub component: String,
    pub cron_expression: String,
}

/// A whole application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub name: String,
    pub variables: BTreeMap<String, VariableSpec>,
    pub components: BTreeMap<String, ComponentSpec>,
    pub http_triggers: Vec<HttpTrigger>,
    pub cron_triggers: Vec<CronTrigger>,
}

impl Manifest {
    /// Reads `path`; component sources are resolved against its folder.
    pub fn load(path: &Path) -> anyhow::Result<Manifest> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading manifest {}", path.display()))?;
        let folder = path.parent().unwrap_or(Path::new("."));
        Manifest::parse(&text, folder).with_context(|| format!("manifest {}", path.display()))
    }

    pub fn parse(text: &str, folder: &Path) -> anyhow::Result<Manifest> {
        let root: Table = text.parse().context("not valid TOML")?;
        only_fields(&root, ROOT_FIELDS, "the manifest")?;
        if let Some(application) = root.get("application").and_then(Value::as_table) {
            only_fields(application, APPLICATION_FIELDS, "[application]")?;
        }
        let version = root
            .get("spin_manifest_version")
            .and_then(Value::as_integer);
        ensure!(version == Some(2), "spin_manifest_version must be 2");
        let name = root
            .get("application")
            .and_then(|a| a.get("name"))
            .and_then(Value::as_str)
            .context("[application] needs a name")?
            .to_string();

        let variables = parse_variables(root.get("variables"))?;
        let mut components = BTreeMap::new();
        if let Some(table) = root.get("component") {
            let table = table.as_table().context("[component] must be a table")?;
            for (id, spec) in table {
                let component = parse_component(id, spec, folder)
                    .with_context(|| format!("component {id:?}"))?;
                components.insert(id.clone(), component);
            }
        }
        let (http_triggers, cron_triggers) = parse_triggers(root.get("trigger"))?;

        let manifest = Manifest {
            name,
            variables,
            components,
            http_triggers,
            cron_triggers,
        };
        manifest.check()?;
        Ok(manifest)
    }

    /// Cross-references: triggers name components, templates name variables, routes are unique.
    fn check(&self) -> anyhow::Result<()> {
        let trigger_components = self
            .http_triggers
            .iter()
            .map(|t| &t.component)
            .chain(self.cron_triggers.iter().map(|t| &t.component));
        for id in trigger_components {
            ensure!(
                self.components.contains_key(id),
                "a trigger names component {id:?}, which is not declared"
            );
        }
        let mut routes = BTreeSet::new();
        for trigger in &self.http_triggers {
            if trigger.route != Route::Private {
                ensure!(
                    routes.insert(trigger.route.clone()),
                    "route {} is declared twice",
                    trigger.route.as_written()
                );
            }
        }
        for trigger in &self.cron_triggers {
            // As the cron trigger plugin parses it (tokio-cron-scheduler 0.13 over croner 2.1).
            croner::Cron::new(&trigger.cron_expression)
                .with_seconds_required()
                .with_dom_and_dow()
                .parse()
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cron expression {:?} of {} is not one the cron trigger takes \
                         (six fields, seconds first): {e}",
                        trigger.cron_expression,
                        trigger.component
                    )
                })?;
        }
        self.check_host_requirements()?;
        for component in self.components.values() {
            let templates = component
                .variables
                .values()
                .chain(component.allowed_outbound_hosts.iter());
            for template in templates {
                for name in crate::template_names(template) {
                    ensure!(
                        self.variables.contains_key(&name),
                        "component {:?} uses variable {name:?}, which [variables] does not declare",
                        component.id
                    );
                }
            }
        }
        Ok(())
    }

    /// Spin's start-up check (`LockedApp::ensure_needs_only`): each trigger refuses to run a
    /// component that needs a host feature it lacks. Listing a `*.spin.internal` host needs
    /// `local_service_chaining`, which only the HTTP trigger supports.
    fn check_host_requirements(&self) -> anyhow::Result<()> {
        let kinds: [(&str, Vec<&String>, &[&str]); 2] = [
            (
                "http",
                self.http_triggers.iter().map(|t| &t.component).collect(),
                &[SERVICE_CHAINING],
            ),
            (
                "cron",
                self.cron_triggers.iter().map(|t| &t.component).collect(),
                &[],
            ),
        ];
        for (kind, components, supported) in kinds {
            let needs_chaining = components.iter().any(|id| {
                self.components[*id]
                    .allowed_outbound_hosts
                    .iter()
                    .any(|entry| {
                        // Spin parses the entry as written: a template is not a chaining host.
                        crate::outbound::AllowedHost::parse(entry)
                            .is_ok_and(|host| host.is_for_service_chaining())
                    })
            });
            if needs_chaining && !supported.contains(&SERVICE_CHAINING) {
                bail!(
                    "This application requires the following features that are not available \
                     in this version of the '{kind}' trigger: {SERVICE_CHAINING}"
                );
            }
        }
        Ok(())
    }

    /// The component whose id is `id`.
    pub fn component(&self, id: &str) -> anyhow::Result<&ComponentSpec> {
        self.components
            .get(id)
            .with_context(|| format!("the app has no component {id:?}"))
    }
}

impl PartialOrd for Route {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Route {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_written().cmp(&other.as_written())
    }
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.ends_with('_')
        && !name.contains("__")
}

fn parse_variables(value: Option<&Value>) -> anyhow::Result<BTreeMap<String, VariableSpec>> {
    let mut variables = BTreeMap::new();
    let Some(value) = value else {
        return Ok(variables);
    };
    let table = value.as_table().context("[variables] must be a table")?;
    for (name, spec) in table {
        ensure!(
            is_variable_name(name),
            "variable name {name:?} is not lower_snake_case"
        );
        let spec = spec
            .as_table()
            .with_context(|| format!("variable {name:?} must be a table"))?;
        for key in spec.keys() {
            ensure!(
                matches!(
                    key.as_str(),
                    "default" | "required" | "secret" | "description"
                ),
                "variable {name:?} has unknown field {key:?}"
            );
        }
        let default = match spec.get("default") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => bail!("the default of variable {name:?} must be a string"),
        };
        let required = spec
            .get("required")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let secret = spec.get("secret").and_then(Value::as_bool).unwrap_or(false);
        ensure!(
            default.is_some() != required,
            "variable {name:?} must have either a default or `required = true`"
        );
        variables.insert(
            name.clone(),
            VariableSpec {
                default,
                required,
                secret,
            },
        );
    }
    Ok(variables)
}

fn string_list(spec: &Table, field: &str) -> anyhow::Result<Vec<String>> {
    match spec.get(field) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .with_context(|| format!("`{field}` must list strings"))
            })
            .collect(),
        Some(_) => bail!("`{field}` must be a list"),
    }
}

fn parse_component(id: &str, spec: &Value, folder: &Path) -> anyhow::Result<ComponentSpec> {
    ensure!(
        !id.is_empty()
            && id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
        "component ids are kebab-case"
    );
    ensure!(
        id.split('-')
            .all(|word| word.chars().next().is_some_and(|c| c.is_ascii_lowercase())),
        "component ids are kebab-case: words of letters and digits, each starting with a letter"
    );
    let spec = spec.as_table().context("must be a table")?;
    only_fields(spec, COMPONENT_FIELDS, "the component")?;
    let source = spec
        .get("source")
        .and_then(Value::as_str)
        .context("needs a `source` path")?;
    let mut variables = BTreeMap::new();
    if let Some(table) = spec.get("variables") {
        for (name, value) in table.as_table().context("`variables` must be a table")? {
            ensure!(
                is_variable_name(name),
                "variable name {name:?} is not lower_snake_case"
            );
            let value = value
                .as_str()
                .with_context(|| format!("variable {name:?} must be a string"))?;
            variables.insert(name.clone(), value.to_string());
        }
    }
    let key_value_stores = string_list(spec, "key_value_stores")?;
    for label in &key_value_stores {
        ensure!(
            is_label(label),
            "key-value store label {label:?} must be kebab-case or snake_case"
        );
    }
    Ok(ComponentSpec {
        id: id.to_string(),
        source: folder.join(source),
        key_value_stores,
        allowed_outbound_hosts: string_list(spec, "allowed_outbound_hosts")?,
        variables,
    })
}

fn parse_triggers(value: Option<&Value>) -> anyhow::Result<(Vec<HttpTrigger>, Vec<CronTrigger>)> {
    let mut http = Vec::new();
    let mut cron = Vec::new();
    let Some(value) = value else {
        return Ok((http, cron));
    };
    let table = value.as_table().context("[trigger] must be a table")?;
    for (kind, list) in table {
        let list = list
            .as_array()
            .with_context(|| format!("[[trigger.{kind}]] must be an array of tables"))?;
        for trigger in list {
            let trigger = trigger
                .as_table()
                .with_context(|| format!("[[trigger.{kind}]] must be a table"))?;
            let component = trigger
                .get("component")
                .and_then(Value::as_str)
                .with_context(|| format!("a [[trigger.{kind}]] needs a `component`"))?
                .to_string();
            match kind.as_str() {
                "http" => only_fields(trigger, HTTP_TRIGGER_FIELDS, "an HTTP trigger")?,
                "cron" => only_fields(trigger, CRON_TRIGGER_FIELDS, "a cron trigger")?,
                _ => {}
            }
            match kind.as_str() {
                "http" => {
                    let route = trigger.get("route").with_context(|| {
                        format!("the HTTP trigger of {component:?} needs a route")
                    })?;
                    let route = Route::parse(route)
                        .with_context(|| format!("the HTTP trigger of {component:?}"))?;
                    http.push(HttpTrigger { route, component });
                }
                "cron" => {
                    let cron_expression = trigger
                        .get("cron_expression")
                        .and_then(Value::as_str)
                        .with_context(|| {
                            format!("the cron trigger of {component:?} needs a cron_expression")
                        })?
                        .to_string();
                    cron.push(CronTrigger {
                        component,
                        cron_expression,
                    });
                }
                other => bail!("trigger type {other:?} is not supported (http and cron are)"),
            }
        }
    }
    Ok((http, cron))
}
