//! Spin's variables: app-level values from defaults and overrides (what `SPIN_VARIABLE_*` gives
//! `spin up`), and component variables expanded from `{{ template }}`s.

use std::collections::BTreeMap;

use anyhow::{Context, bail};

use crate::manifest::Manifest;

/// Every app variable's value.
#[derive(Debug, Clone, Default)]
pub struct AppVariables(BTreeMap<String, String>);

impl AppVariables {
    /// Defaults overlaid by `overrides`. Like `spin up`, refuses to start when a required
    /// variable has no value, and rejects overrides of variables the app does not declare.
    pub fn resolve(
        manifest: &Manifest,
        overrides: &BTreeMap<String, String>,
    ) -> anyhow::Result<AppVariables> {
        for name in overrides.keys() {
            if !manifest.variables.contains_key(name) {
                bail!("variable {name:?} is set but the app does not declare it");
            }
        }
        let mut values = BTreeMap::new();
        for (name, spec) in &manifest.variables {
            let value = match (overrides.get(name), &spec.default) {
                (Some(value), _) => value.clone(),
                (None, Some(default)) => default.clone(),
                (None, None) => bail!(
                    "required variable {name:?} has no value (set SPIN_VARIABLE_{})",
                    name.to_ascii_uppercase()
                ),
            };
            values.insert(name.clone(), value);
        }
        Ok(AppVariables(values))
    }

    /// Replaces each `{{ name }}` in `template` with the variable's value.
    pub fn expand(&self, template: &str) -> anyhow::Result<String> {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .with_context(|| format!("unclosed `{{{{` in {template:?}"))?;
            let name = after[..end].trim();
            let value = self
                .0
                .get(name)
                .with_context(|| format!("{template:?} names unknown variable {name:?}"))?;
            out.push_str(value);
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// Whether `name` is a valid variable name as Spin checks it on `variables.get`.
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}
