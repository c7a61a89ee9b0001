//! Object servers for the remote-corpus tests (`tests/python/object_server.py`): an S3 API
//! (moto, with authentication on), GCS (fake-gcs-server), Azure Blob Storage (Azurite) and a
//! plain HTTP server with a small fake HuggingFace hub, each on 127.0.0.1 with a free port,
//! stopped when dropped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use crate::{python, repo_root};

pub struct ObjectServer {
    child: Child,
    /// Held open: the server stops when its stdin closes.
    _stdin: ChildStdin,
    pub endpoint: String,
    announced: serde_json::Value,
}

impl ObjectServer {
    /// An S3 API whose bucket `bucket` holds every file under `root` (keys relative to it).
    pub fn s3(root: &Path, bucket: &str) -> ObjectServer {
        Self::start(&["s3", "--bucket", bucket], root)
    }

    /// HTTP with Range and If-Match at `/files/...` and a fake hub over `root/hub/OWNER/NAME`.
    pub fn http(root: &Path) -> ObjectServer {
        Self::start(&["http"], root)
    }

    /// [`Self::http`] that logs every request (method, path, Authorization) to `log`, and whose
    /// hub announces its listings' second page on `next_endpoint` when given.
    pub fn http_logged(root: &Path, log: &Path, next_endpoint: Option<&str>) -> ObjectServer {
        let log = log.to_str().expect("a UTF-8 log path");
        let mut arguments = vec!["http", "--log", log];
        if let Some(endpoint) = next_endpoint {
            arguments.extend(["--next-endpoint", endpoint]);
        }
        Self::start(&arguments, root)
    }

    /// A GCS API (fake-gcs-server) whose bucket `bucket` holds every file under `root`.
    pub fn gcs(root: &Path, bucket: &str) -> ObjectServer {
        Self::start(&["gcs", "--bucket", bucket], root)
    }

    /// Azure Blob Storage (Azurite, `FLIGHTLM_AZURITE` as `scripts/env.sh` installs it) whose
    /// container `bucket` holds every file under `root`.
    pub fn azure(root: &Path, bucket: &str) -> ObjectServer {
        let azurite = std::env::var("FLIGHTLM_AZURITE").expect(
            "FLIGHTLM_AZURITE: run the tests through scripts/test.sh, or `source scripts/env.sh \
             && ensure_azurite` (npm install azurite)",
        );
        Self::start(&["azure", "--bucket", bucket, "--azurite", &azurite], root)
    }

    /// The environment that reads this GCS server through object_store's GCS client.
    pub fn gcs_environment(&self) -> Vec<(String, String)> {
        let key = serde_json::json!({
            "private_key": "",
            "private_key_id": "",
            "client_email": "",
            "disable_oauth": true,
            "gcs_base_url": self.endpoint,
        });
        vec![
            ("GOOGLE_SERVICE_ACCOUNT_KEY".into(), key.to_string()),
            ("GOOGLE_ALLOW_HTTP".into(), "true".into()),
        ]
    }

    /// The environment that reads this Azurite through object_store's Azure client.
    pub fn azure_environment(&self) -> Vec<(String, String)> {
        let field = |name: &str| self.announced[name].as_str().expect(name).to_string();
        vec![
            ("AZURE_STORAGE_USE_EMULATOR".into(), "true".into()),
            ("AZURITE_BLOB_STORAGE_URL".into(), self.endpoint.clone()),
            ("AZURE_STORAGE_ACCOUNT_NAME".into(), field("account")),
            ("AZURE_STORAGE_ACCOUNT_KEY".into(), field("key")),
            ("AZURE_ALLOW_HTTP".into(), "true".into()),
        ]
    }

    fn start(arguments: &[&str], root: &Path) -> ObjectServer {
        let mut child = Command::new(python())
            .arg(repo_root().join("tests/python/object_server.py"))
            .args(arguments)
            .arg("--root")
            .arg(root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting tests/python/object_server.py");
        let stdin = child.stdin.take().expect("object server stdin");
        let stdout = child.stdout.take().expect("object server stdout");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = sender.send(line);
        });
        let line = receiver
            .recv_timeout(Duration::from_secs(120))
            .expect("the object server did not start within 120 s");
        let announced: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("object server announced `{line}`"));
        let endpoint = announced["endpoint"]
            .as_str()
            .expect("endpoint")
            .to_string();
        ObjectServer {
            child,
            _stdin: stdin,
            endpoint,
            announced,
        }
    }

    /// Puts `file` into the S3 server's `bucket` as `key` (with the server's credentials).
    pub fn upload(&self, file: &Path, bucket: &str, key: &str) {
        let script = "import boto3, sys\n\
            endpoint, access, secret, path, bucket, key = sys.argv[1:]\n\
            boto3.client('s3', endpoint_url=endpoint, region_name='us-east-1',\n\
                aws_access_key_id=access, aws_secret_access_key=secret).upload_file(path, bucket, key)";
        let status = Command::new(python())
            .args(["-c", script, &self.endpoint])
            .args([
                self.announced["access_key"].as_str().expect("access key"),
                self.announced["secret_key"].as_str().expect("secret key"),
            ])
            .arg(file)
            .args([bucket, key])
            .status()
            .expect("running the upload");
        assert!(status.success(), "uploading {} as {key}", file.display());
    }

    /// The environment a process needs to read the S3 server through `endpoint` (the server's
    /// own, or a proxy's in front of it), with the server's credentials.
    pub fn s3_environment(&self, endpoint: &str) -> Vec<(String, String)> {
        self.s3_environment_with(
            endpoint,
            self.announced["access_key"].as_str().expect("access key"),
            self.announced["secret_key"].as_str().expect("secret key"),
        )
    }

    /// As [`Self::s3_environment`], with other credentials.
    pub fn s3_environment_with(
        &self,
        endpoint: &str,
        access_key: &str,
        secret_key: &str,
    ) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", endpoint),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", access_key),
            ("AWS_SECRET_ACCESS_KEY", secret_key),
        ]
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
    }
}

impl Drop for ObjectServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
