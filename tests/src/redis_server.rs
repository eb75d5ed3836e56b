//! A real `redis-server` (Debian's package, which `scripts/test` installs) for one test: on a
//! free loopback port, nothing saved to disk, stopped when dropped; and the runtime config file
//! that puts an app's `default` store on it, as an operator's `runtime-config/redis.toml` does.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub struct RedisServer {
    child: std::sync::Mutex<Child>,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts a server and waits until it answers `PING`.
    pub fn start() -> anyhow::Result<RedisServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir =
            std::env::temp_dir().join(format!("archiver-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let child = spawn(port, &dir)?;
        let server = RedisServer {
            child: std::sync::Mutex::new(child),
            port,
            dir,
        };
        server.wait_ready()?;
        std::fs::write(
            server.runtime_config(),
            format!(
                "# The app's key-value store on Redis, as runtime-config/redis.toml has it.\n\
                 [key_value_store.default]\ntype = \"redis\"\nurl = \"{}\"\n",
                server.url()
            ),
        )?;
        Ok(server)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A runtime config file putting the `default` store on this server.
    pub fn runtime_config(&self) -> PathBuf {
        self.dir.join("runtime-config.toml")
    }

    /// Stops the server and starts it again on the same port, empty: it keeps no files, as a
    /// server without persistence. Connections open before see an error.
    pub fn restart(&self) -> anyhow::Result<()> {
        let mut child = self.child.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
        *child = spawn(self.port, &self.dir)?;
        drop(child);
        self.wait_ready()
    }

    /// Stops the server as an outage does, keeping its data: `SHUTDOWN SAVE` writes it to the
    /// server's folder first. Until [`RedisServer::start_again`], every command is refused a
    /// connection.
    pub fn stop_keeping_data(&self) -> anyhow::Result<()> {
        let mut child = self.child.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let mut connection = redis::Client::open(self.url())?.get_connection()?;
        // The server closes the connection as it stops: no answer comes.
        let _ = redis::cmd("SHUTDOWN").arg("SAVE").exec(&mut connection);
        let status = child.wait()?;
        if !status.success() {
            bail!("redis-server on port {} stopped with {status}", self.port);
        }
        if !self.dir.join("dump.rdb").exists() {
            bail!("redis-server on port {} saved nothing", self.port);
        }
        Ok(())
    }

    /// Starts a server stopped by [`RedisServer::stop_keeping_data`] again on the same port,
    /// with the data it saved.
    pub fn start_again(&self) -> anyhow::Result<()> {
        let mut child = self.child.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        *child = spawn(self.port, &self.dir)?;
        drop(child);
        self.wait_ready()
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let client = redis::Client::open(self.url())?;
        let started = Instant::now();
        loop {
            let answer = client
                .get_connection()
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            match answer {
                Ok(_) => return Ok(()),
                Err(e) if started.elapsed() > Duration::from_secs(10) => {
                    bail!("redis-server on port {} did not answer: {e}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

fn spawn(port: u16, dir: &Path) -> anyhow::Result<Child> {
    Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting redis-server (Debian's redis-server package; scripts/test installs it)")
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Ok(mut child) = self.child.lock() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
