#!/usr/bin/env python3
"""A real SMTP server for bannin's tests, built on aiosmtpd (Debian: python3-aiosmtpd).

Each accepted message is written to DIR/N.json with its envelope, the parsed subject, headers and
decoded body, and whether it came over TLS and AUTH. Prints `listening on 127.0.0.1:PORT` when ready.
Modes: plain, starttls (STARTTLS required before MAIL), implicit (TLS from the first byte).
"""
import argparse
import asyncio
import email
import email.policy
import json
import os
import ssl

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Store:
    def __init__(self, directory):
        self.directory = directory
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        body = message.get_body(preferencelist=("plain",))
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "subject": message["subject"],
            "headers": [[name, str(value)] for name, value in message.items()],
            "from": message["from"],
            "to": message["to"],
            "body": body.get_content() if body is not None else "",
            "tls": server.transport.get_extra_info("ssl_object") is not None,
            "authenticated": bool(session.authenticated),
        }
        # Written aside and renamed, so a reader never sees half a file.
        tmp = os.path.join(self.directory, f".{self.count}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.rename(tmp, os.path.join(self.directory, f"{self.count}.json"))
        return "250 OK"


def authenticator(user, password):
    def check(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == user
            and auth_data.password.decode() == password
        )
        return AuthResult(success=ok, handled=False)

    return check


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--mode", choices=["plain", "starttls", "implicit"], default="plain")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--auth", help="USER:PASSWORD that AUTH must present")
    args = parser.parse_args()

    context = None
    if args.mode != "plain":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
    handler = Store(args.dir)

    def factory():
        options = {}
        if args.mode == "starttls":
            options.update(tls_context=context, require_starttls=True)
        if args.auth:
            user, password = args.auth.split(":", 1)
            options.update(
                authenticator=authenticator(user, password),
                auth_required=True,
                # Implicit TLS is invisible to aiosmtpd's AUTH check, so only STARTTLS is enforced here.
                auth_require_tls=args.mode == "starttls",
            )
        return SMTP(handler, hostname="bannin-test", **options)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        factory, "127.0.0.1", args.port, ssl=context if args.mode == "implicit" else None
    )
    port = server.sockets[0].getsockname()[1]
    print(f"listening on 127.0.0.1:{port}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
