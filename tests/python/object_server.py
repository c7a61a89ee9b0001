"""Object servers for the remote-corpus tests, on 127.0.0.1 with a free port.

    object_server.py s3 --root DIR --bucket NAME
        An S3 API (moto) with IAM authentication on: creates a user with full access, uploads
        every file under DIR into the bucket (keys are paths relative to DIR), then prints
        {"endpoint", "access_key", "secret_key"}.
    object_server.py http --root DIR
        Plain HTTP with HEAD, Range and If-Match, serving DIR at /files/..., and a small fake
        HuggingFace hub: /api/datasets/OWNER/NAME/tree/main[/PATH]?recursive=true lists
        DIR/hub/OWNER/NAME (two entries a page, paged by Link headers as the hub pages), and
        /datasets/OWNER/NAME/resolve/main/PATH redirects to the file, as the hub does for LFS
        files. Prints {"endpoint"}. Requests are logged to stderr.

Both serve until stdin closes (the test holds the pipe), so a failed test leaves nothing running.
"""

import argparse
import hashlib
import http.server
import json
import os
import sys
import threading
import urllib.parse


def serve_until_stdin_closes():
    sys.stdout.flush()
    sys.stdin.read()


def run_s3(root, bucket):
    import boto3
    import requests
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
    for directory, _, names in os.walk(root):
        for name in sorted(names):
            path = os.path.join(directory, name)
            s3.upload_file(path, bucket, os.path.relpath(path, root))
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

    def log_message(self, format, *args):
        sys.stderr.write("object_server: " + (format % args) + "\n")

    def do_HEAD(self):
        self.route(head=True)

    def do_GET(self):
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
            next_url = f"http://{self.headers['Host']}{urllib.parse.urlsplit(self.path).path}" \
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


def run_http(root):
    Handler.root = root
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps({"endpoint": f"http://127.0.0.1:{server.server_address[1]}"}))
    serve_until_stdin_closes()
    server.shutdown()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["s3", "http"])
    parser.add_argument("--root", required=True)
    parser.add_argument("--bucket", default="corpus")
    args = parser.parse_args()
    if args.kind == "s3":
        run_s3(args.root, args.bucket)
    else:
        run_http(args.root)


if __name__ == "__main__":
    main()
