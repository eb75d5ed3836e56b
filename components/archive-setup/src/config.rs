//! The component's settings, loaded once per request from Spin variables.

use archiver_core::phone::Region;
use archiver_core::secrets::SecretKey;

pub struct Config {
    pub admin_token: String,
    pub staging_key: SecretKey,
    pub default_region: Region,
    /// The only archive origin the manifest lets this component call.
    pub source_origin: String,
}

impl Config {
    /// Reads every variable; a missing or malformed one is an error naming the variable, never
    /// its value.
    pub fn load() -> Result<Config, String> {
        let get = |name: &str| {
            spin_sdk::variables::get(name).map_err(|e| format!("variable {name}: {e}"))
        };
        Ok(Config {
            admin_token: get("admin_token")?,
            staging_key: get("staging_key")?
                .parse()
                .map_err(|e| format!("variable staging_key: {e}"))?,
            default_region: get("default_region")?
                .parse()
                .map_err(|e| format!("variable default_region: {e}"))?,
            source_origin: get("source_origin")?
                .trim_end_matches('/')
                .to_ascii_lowercase(),
        })
    }
}
