//! Headless Chromium driven over WebDriver (Debian's `chromium` and `chromedriver`, installed
//! by `deploy/local/test.sh`): the W3C protocol is a few JSON requests, made with reqwest.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use serde_json::{Value, json};
use sluice_tests::Process;

/// The key of an element reference in W3C WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

#[derive(Debug)]
pub struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`.
    session: String,
    port: u16,
    _driver: Process,
}

impl Browser {
    /// Starts chromedriver on a free port (its log in `log`) and a headless session.
    pub async fn start(log: PathBuf) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let program = which("chromedriver").context(
            "chromedriver is missing: `apt-get install chromium chromium-driver` (deploy/local/test.sh does)",
        )?;
        let driver = Process::start_program(
            &program,
            &[&format!("--port={port}"), "--allowed-ips=127.0.0.1"],
            log,
        )?;
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        sluice_tests::eventually(Duration::from_secs(30), "chromedriver ready", || async {
            let Ok(reply) = http.get(format!("{base}/status")).send().await else {
                return Ok(None);
            };
            let status: Value = reply.json().await?;
            Ok((status["value"]["ready"] == true).then_some(()))
        })
        .await?;
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": which("chromium").context("chromium is missing")?,
                // Root has no sandbox; /dev/shm may be small on CI machines.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1600"],
            },
        }}});
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await?
            .json()
            .await?;
        let session = created["value"]["sessionId"]
            .as_str()
            .with_context(|| format!("no session: {created}"))?;
        Ok(Self {
            http,
            session: format!("{base}/session/{session}"),
            port,
            _driver: driver,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> anyhow::Result<Value> {
        let request = self.http.request(method, format!("{}{path}", self.session));
        let request = if body.is_null() {
            request
        } else {
            request.json(&body)
        };
        let reply: Value = request.send().await?.json().await?;
        if reply["value"]["error"].is_string() {
            bail!("webdriver {path}: {}", reply["value"]);
        }
        Ok(reply["value"].clone())
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.call(reqwest::Method::POST, "/url", json!({"url": url}))
            .await
            .map(drop)
    }

    /// Runs `script` in the page (a function body: `return …`) with `args`.
    pub async fn eval(&self, script: &str, args: Value) -> anyhow::Result<Value> {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": script, "args": args}),
        )
        .await
    }

    /// The text a person sees in the first element `css` selects (`None`: no such element).
    pub async fn text(&self, css: &str) -> anyhow::Result<Option<String>> {
        let text = self
            .eval(
                "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
                json!([css]),
            )
            .await?;
        Ok(text.as_str().map(str::to_owned))
    }

    /// The texts of every element `css` selects.
    pub async fn texts(&self, css: &str) -> anyhow::Result<Vec<String>> {
        let texts = self
            .eval(
                "return [...document.querySelectorAll(arguments[0])].map((e) => e.innerText);",
                json!([css]),
            )
            .await?;
        Ok(serde_json::from_value(texts)?)
    }

    async fn element(&self, css: &str) -> anyhow::Result<String> {
        let found = self
            .call(
                reqwest::Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await?;
        found[ELEMENT]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no element {css}: {found}"))
    }

    /// Clicks the first element `css` selects, as a person would (WebDriver's click).
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        let id = self.element(css).await?;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            json!({}),
        )
        .await
        .map(drop)
    }

    /// Types `text` into the first element `css` selects.
    pub async fn type_into(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let id = self.element(css).await?;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            json!({"text": text}),
        )
        .await
        .map(drop)
    }

    /// Writes a PNG of the window to `path` and prints where.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let png = self
            .call(reqwest::Method::GET, "/screenshot", Value::Null)
            .await?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().context("no screenshot")?)?;
        std::fs::write(path, bytes)?;
        println!("screenshot: {}", path.display());
        Ok(())
    }

    /// Ends the session (chromedriver closes the browser); the driver stops when dropped.
    pub async fn quit(self) -> anyhow::Result<()> {
        self.http.delete(&self.session).send().await?;
        Ok(())
    }
}

impl Drop for Browser {
    /// Ends the session also when a test fails: killing chromedriver alone would leave the
    /// browser running. Blocking and plain, since a panic may be unwinding an async task.
    fn drop(&mut self) {
        use std::io::{Read as _, Write as _};
        let Some(path) = self.session.find("/session/").map(|at| &self.session[at..]) else {
            return;
        };
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let request = format!(
            "DELETE {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        if stream.write_all(request.as_bytes()).is_ok() {
            let _ = stream.read_to_end(&mut Vec::new());
        }
    }
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
