//! Support for the application-level tests: reading the project's `spin.toml` and workspace.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The repository root (this crate lives in `tests/`).
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Reads and parses a TOML file of the project, relative to the root.
pub fn read_toml(relative: &str) -> anyhow::Result<toml::Table> {
    let path = project_root().join(relative);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.parse::<toml::Table>()
        .with_context(|| format!("parsing {}", path.display()))
}

/// The names inside every `{{ name }}` template of `text`.
pub fn template_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        names.push(after[..end].trim().to_string());
        rest = &after[end + 2..];
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_template_name() {
        assert_eq!(
            template_names("{{ a }}://x/{{b}} and {{ c"),
            vec!["a".to_string(), "b".to_string()]
        );
        assert!(template_names("plain").is_empty());
    }
}
