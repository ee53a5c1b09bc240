#!/usr/bin/env python3
"""An HTTPS webhook receiver for bannin's tests (Python standard library only).

Serves TLS with the given certificate, answers every POST with 200 and writes it to DIR/N.json
(path, content type, body). Prints `listening on 127.0.0.1:PORT` when ready.
"""
import argparse
import http.server
import json
import os
import ssl
import threading

COUNT = 0
LOCK = threading.Lock()


def handler_for(directory):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            global COUNT
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            with LOCK:
                COUNT += 1
                n = COUNT
            record = {
                "path": self.path,
                "content_type": self.headers.get("Content-Type"),
                "body": body.decode("utf-8", "replace"),
            }
            # Written aside and renamed, so a reader never sees half a file.
            tmp = os.path.join(directory, f".{n}.tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(record, f)
            os.rename(tmp, os.path.join(directory, f"{n}.json"))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    return Handler


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_for(args.dir))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
