//! The component's settings, loaded once per request from Spin variables.

use archiver_core::phone::Region;
use archiver_core::secrets::SecretKey;

pub struct Config {
    pub admin_token: String,
    /// Bearer token of the daily timer's requests to `POST /api/timer`.
    pub timer_token: String,
    pub staging_key: SecretKey,
    pub default_region: Region,
    /// The only archive origin the manifest lets this component call.
    pub source_origin: String,
}

impl Config {
    /// Reads every variable; a missing or malformed one is an error naming the variable, never
    /// its value.
    pub fn load() -> Result<Config, String> {
        Ok(Config {
            admin_token: archive_host::variable("admin_token")?,
            timer_token: archive_host::variable("timer_token")?,
            staging_key: archive_host::staging_key()?,
            default_region: archive_host::default_region()?,
            source_origin: archive_host::variable("source_origin")?
                .trim_end_matches('/')
                .to_ascii_lowercase(),
        })
    }
}
