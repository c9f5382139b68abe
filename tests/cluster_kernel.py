"""Runs notebook cells in a kernel started through a running JupyterLab's REST API on its Unix
socket, as a browser behind the ssh tunnel would (tests/cluster.sh, issue #14).

    python cluster_kernel.py SOCKET|URL TOKEN_FILE CELLS.json [KERNEL_NAME [NOTEBOOK_PATH]]

SOCKET: a lab's Unix socket; URL: a Jupyter server's base URL (e.g. a JupyterHub user's server
through the hub's proxy, http://127.0.0.1:18000/user/NAME/).

CELLS.json: a list of {"code": "...", "expect": "text the cell's output must contain"}. The token
is read from TOKEN_FILE (never a command-line argument). Prints one line per cell with its time and
exits 1 when a cell errors, times out or its output lacks the expected text. The kernel is shut
down at the end. Needs websocket-client (in the lab's venv, a dependency of JupyterLab).
"""

import datetime
import http.client
import json
import socket
import sys
import time
import urllib.parse
import uuid

import websocket  # websocket-client

WHERE, TOKEN_FILE, CELLS = sys.argv[1], sys.argv[2], sys.argv[3]
KERNEL = sys.argv[4] if len(sys.argv) > 4 else "moe-lens-rust"
KERNEL_PATH = sys.argv[5] if len(sys.argv) > 5 else ""  # the kernel's folder, relative to the server's root
if WHERE.startswith("http://"):
    SOCK = None
    _u = urllib.parse.urlsplit(WHERE)
    HOST, PORT, BASE = _u.hostname, _u.port or 80, _u.path.rstrip("/")
else:
    SOCK, HOST, PORT, BASE = WHERE, "localhost", None, ""
with open(TOKEN_FILE) as f:
    TOKEN = f.read().strip()
AUTH = {"Authorization": "token " + TOKEN}
CELL_TIMEOUT = 600


def unix_socket(timeout=60):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(SOCK)
    return s


class UnixHTTPConnection(http.client.HTTPConnection):
    def connect(self):
        self.sock = unix_socket()


def rest(method, path, body=None):
    path = BASE + path
    c = UnixHTTPConnection("localhost", timeout=60) if SOCK else http.client.HTTPConnection(HOST, PORT, timeout=60)
    headers = dict(AUTH)
    data = None
    if body is not None:
        data = json.dumps(body)
        headers["Content-Type"] = "application/json"
    c.request(method, path, body=data, headers=headers)
    r = c.getresponse()
    text = r.read().decode()
    return r.status, (json.loads(text) if text else None)


def main():
    with open(CELLS) as f:
        cells = json.load(f)
    status, specs = rest("GET", "/api/kernelspecs")
    if status != 200 or KERNEL not in specs.get("kernelspecs", {}):
        print(f"cluster_kernel: the server does not list the kernel {KERNEL} ({status}: {specs})")
        return 1
    spec = specs["kernelspecs"][KERNEL]["spec"]
    print(f"cluster_kernel: kernel spec {KERNEL}: {spec['display_name']}, {spec['argv'][0]}")
    t0 = time.monotonic()
    status, kernel = rest("POST", "/api/kernels", {"name": KERNEL, "path": KERNEL_PATH})
    if status != 201:
        print(f"cluster_kernel: starting a kernel failed: {status} {kernel}")
        return 1
    kid = kernel["id"]
    failed = 0
    try:
        # the server holds the websocket until the kernel answers (its kernel_info_timeout, 60 s):
        # the client must wait that long (evcxr starts in 5-25 s on a busy 2-core machine)
        where = f"ws://{HOST}{':' + str(PORT) if PORT else ''}{BASE}/api/kernels/{kid}/channels"
        ws = websocket.create_connection(
            where,
            **({"socket": unix_socket(CELL_TIMEOUT)} if SOCK else {}),
            header=[f"{k}: {v}" for k, v in AUTH.items()],
            timeout=CELL_TIMEOUT,
        )
        session = uuid.uuid4().hex
        print(f"cluster_kernel: kernel {kid} started in {time.monotonic() - t0:.1f} s")
        for i, cell in enumerate(cells, 1):
            mid = uuid.uuid4().hex
            ws.send(
                json.dumps(
                    {
                        "header": {
                            "msg_id": mid,
                            "username": "cluster-test",
                            "session": session,
                            "msg_type": "execute_request",
                            "version": "5.3",
                            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                        },
                        "parent_header": {},
                        "metadata": {},
                        "content": {
                            "code": cell["code"],
                            "silent": False,
                            "store_history": True,
                            "user_expressions": {},
                            "allow_stdin": False,
                            "stop_on_error": True,
                        },
                        "channel": "shell",
                        "buffers": [],
                    }
                )
            )
            t = time.monotonic()
            out, error, idle, reply = [], None, False, None
            while not (idle and reply):
                m = json.loads(ws.recv())
                if m.get("parent_header", {}).get("msg_id") != mid:
                    continue
                kind, content = m["msg_type"], m["content"]
                if kind == "stream":
                    out.append(content["text"])
                elif kind in ("execute_result", "display_data"):
                    out.append(content["data"].get("text/plain", ""))
                elif kind == "error":
                    error = f"{content['ename']}: {content['evalue']}"
                elif kind == "status" and content["execution_state"] == "idle":
                    idle = True
                elif kind == "execute_reply":
                    reply = content["status"]
            took = time.monotonic() - t
            text = "".join(out)
            first = cell["code"].strip().splitlines()[0][:60]
            ok = error is None and reply == "ok" and cell.get("expect", "") in text
            print(f"cluster_kernel: cell {i} ({first}) {'ok' if ok else 'FAILED'} in {took:.1f} s")
            for line in text.strip().splitlines()[:6]:
                print(f"    {line}")
            if not ok:
                print(f"    error: {error}, reply: {reply}, expected output: {cell.get('expect')!r}")
                failed += 1
                break
        ws.close()
    finally:
        rest("DELETE", f"/api/kernels/{kid}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
