//! The project's binaries as child processes, and the shared services' scripts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// Path of a workspace binary (`sluice-producer`, `sluice-consumer`), built by the test command
/// before the tests run.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    // target/debug/deps/<test binary> → target/debug/<name>
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary has no target directory")?;
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: build it first with `cargo build --bins` (deploy/local/test.sh does)",
            path.display()
        );
    }
    Ok(path)
}

/// A sluice binary running as a child process, with its output in a log file.
#[derive(Debug)]
pub struct Process {
    pub child: tokio::process::Child,
    pub log: PathBuf,
}

impl Process {
    /// Starts `binary args…` (one of the project's binaries), logging to `log`.
    pub fn start(binary_name: &str, args: &[&str], log: PathBuf) -> anyhow::Result<Self> {
        Self::start_program(&binary(binary_name)?, args, log)
    }

    /// Starts `binary --config CONFIG run`, logging to the file `log` beside the config.
    pub fn run(binary_name: &str, config: &Path, log: &str) -> anyhow::Result<Self> {
        Self::command(binary_name, config, &["run"], log)
    }

    /// Starts `binary --config CONFIG args…`, logging to the file `log` beside the config.
    pub fn command(
        binary_name: &str,
        config: &Path,
        args: &[&str],
        log: &str,
    ) -> anyhow::Result<Self> {
        let mut all = vec![
            "--config",
            config.to_str().context("config path is not UTF-8")?,
        ];
        all.extend_from_slice(args);
        Self::start(binary_name, &all, config.with_file_name(log))
    }

    /// Starts any `program args…`, logging to `log`.
    pub fn start_program(program: &Path, args: &[&str], log: PathBuf) -> anyhow::Result<Self> {
        let output = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = tokio::process::Command::new(program)
            .args(args)
            .stdout(output.try_clone()?)
            .stderr(output)
            .kill_on_drop(true)
            .spawn()?;
        Ok(Self { child, log })
    }

    async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.child.id().context("the process has already exited")?;
        let status = tokio::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .await?;
        if !status.success() {
            bail!("kill -{signal} {pid} failed: {status}");
        }
        Ok(())
    }

    /// SIGKILL: the process gets no chance to flush or confirm anything.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        self.signal("KILL").await?;
        self.child.wait().await?;
        Ok(())
    }

    /// SIGTERM, then waits for the exit code.
    pub async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        self.signal("TERM").await?;
        let status = tokio::time::timeout(timeout, self.child.wait()).await??;
        Ok(status.code())
    }

    /// SIGTERM, and the process must exit 0 within `timeout` (an error with its output if not).
    pub async fn stop(&mut self, timeout: Duration) -> anyhow::Result<()> {
        match self.terminate(timeout).await? {
            Some(0) => Ok(()),
            code => bail!(
                "{} exited with {code:?} after SIGTERM:\n{}",
                self.log.display(),
                self.output()
            ),
        }
    }

    /// Waits for the process to exit by itself.
    pub async fn wait(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let status = tokio::time::timeout(timeout, self.child.wait()).await??;
        Ok(status.code())
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A port of 127.0.0.1 free right now (for a listen address a test needs to know).
///
/// # Panics
/// When no port can be bound.
#[allow(clippy::unwrap_used)]
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Runs `binary --config config args…` to its end (at most `timeout`), logging to the file `log`
/// beside the config (replacing an earlier one): the exit code and everything it printed.
pub async fn run_command(
    binary_name: &str,
    config: &Path,
    args: &[&str],
    log: &str,
    timeout: Duration,
) -> anyhow::Result<(Option<i32>, String)> {
    // A log of an earlier run with the same name would read as this run's output.
    let _ = std::fs::remove_file(config.with_file_name(log));
    let mut process = Process::command(binary_name, config, args, log)?;
    let code = process.wait(timeout).await?;
    Ok((code, process.output()))
}

/// The JSON report of a `--format json` command: the last line of its output that parses as a
/// JSON object (logs come before it).
pub fn json_report(output: &str) -> anyhow::Result<serde_json::Value> {
    output
        .lines()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .filter(serde_json::Value::is_object)
        })
        .with_context(|| format!("no JSON report in\n{output}"))
}

/// Runs a `deploy/local/<service>.sh` command (`stop`, `start`), for fault tests.
pub async fn service(name: &str, command: &str) -> anyhow::Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../deploy/local/{name}.sh"));
    let status = tokio::process::Command::new("bash")
        .arg(&script)
        .arg(command)
        .stdout(std::process::Stdio::null())
        .status()
        .await?;
    if !status.success() {
        bail!("{} {command} failed: {status}", script.display());
    }
    Ok(())
}

/// A shared service a test stopped (`deploy/local/{name}.sh stop`). It is started again when
/// this is dropped while stopped, so a failing assertion never leaves it down for the tests that
/// run after.
#[derive(Debug)]
pub struct StoppedService {
    name: &'static str,
    stopped: bool,
}

impl StoppedService {
    pub async fn stop(name: &'static str) -> anyhow::Result<Self> {
        let guard = Self {
            name,
            stopped: true,
        };
        service(name, "stop").await?;
        Ok(guard)
    }

    /// Starts the service again and waits until it answers.
    pub async fn start(mut self) -> anyhow::Result<()> {
        service(self.name, "start").await?;
        self.stopped = false;
        Ok(())
    }
}

impl Drop for StoppedService {
    fn drop(&mut self) {
        if !self.stopped {
            return;
        }
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../deploy/local/{}.sh", self.name));
        let status = std::process::Command::new("bash")
            .arg(&script)
            .arg("start")
            .stdout(std::process::Stdio::null())
            .status();
        if !matches!(&status, Ok(s) if s.success()) {
            eprintln!(
                "could not start {} again ({status:?}): run `bash {} start`",
                self.name,
                script.display()
            );
        }
    }
}
