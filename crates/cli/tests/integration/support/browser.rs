//! A headless browser driven over WebDriver, for the widget's tests: Chromium through
//! chromedriver (what `scripts/test` installs and CI runs), or Firefox through geckodriver with
//! `CLAWGATE_TEST_BROWSER=firefox` (the driver from `cargo install geckodriver`, on `PATH`). Each
//! browser gets its own driver on a free port and its own empty profile; the driver and every
//! browser process it started are killed (as one process group) when the browser is dropped.

use super::{eventually, free_port};
use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

const CHROMEDRIVER: &str = "chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const GECKODRIVER: &str = "geckodriver";
const FIREFOX: &str = "/usr/bin/firefox-esr";

/// A headless Chromium session.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium (window `width`×`height`).
    pub async fn start(width: u32, height: u32) -> Browser {
        let port = free_port();
        let profile = tempfile::tempdir().expect("profile dir");
        let firefox = std::env::var("CLAWGATE_TEST_BROWSER").is_ok_and(|b| b == "firefox");
        let (program, port_arg) = if firefox {
            (GECKODRIVER, format!("--port={port}"))
        } else {
            (CHROMEDRIVER, format!("--port={port}"))
        };
        let driver = Command::new(program)
            .arg(port_arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so the browser's processes go when the test kills it.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {program} ({e}); scripts/test installs chromium and chromium-driver")
            });
        let url = format!("http://127.0.0.1:{port}");
        let capabilities = if firefox {
            json!({
                "browserName": "firefox",
                "moz:firefoxOptions": {
                    "binary": FIREFOX,
                    "args": ["-headless", format!("--width={width}"), format!("--height={height}"), "-profile", profile.path().display().to_string()],
                },
            })
        } else {
            json!({
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": [
                        "--headless=new",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-dev-shm-usage",
                        "--disable-quic",
                        "--no-first-run",
                        "--disable-background-networking",
                        "--disable-component-update",
                        "--disable-sync",
                        "--disable-extensions",
                        format!("--window-size={width},{height}"),
                        format!("--user-data-dir={}", profile.path().display()),
                    ],
                },
            })
        };
        let capabilities = match capabilities {
            Value::Object(map) => map,
            _ => unreachable!(),
        };
        let client = eventually(
            Duration::from_secs(30),
            "chromedriver to start a session",
            || {
                let (url, capabilities) = (url.clone(), capabilities.clone());
                async move {
                    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                        .capabilities(capabilities)
                        .connect(&url)
                        .await
                        .ok()
                }
            },
        )
        .await;
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    /// Runs `script` in the page (its `arguments` are `args`) and returns its value.
    pub async fn run(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Waits until `script` returns something other than `null`/`false`, and returns it.
    pub async fn until(&self, what: &str, timeout: Duration, script: &str) -> Value {
        eventually(timeout, what, || async move {
            let value = self.client.execute(script, vec![]).await.ok()?;
            match value {
                Value::Null | Value::Bool(false) => None,
                value => Some(value),
            }
        })
        .await
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.driver.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.driver.wait();
    }
}
