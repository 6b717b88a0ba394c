"""Seed-corpus capture for the fuzz targets (tools/capture-corpus.sh puts this directory
first on PYTHONPATH while the integration suite runs; it does nothing unless
SB_CAPTURE_DIR is set).

Every Python process of the suite — pytest playing the callers, fake_agent.py playing the
agents — then records what each of its TCP/unix sockets sent, and when the socket closes
(or the process exits) writes it as one file: bytes that start like an HTTP/1.1 request
go to $SB_CAPTURE_DIR/http1/, bytes that start like an HTTP/1.x response to
$SB_CAPTURE_DIR/upstream/. Files are named by content hash, so a request sent a thousand
times is one file. Nothing else about the sockets changes."""

import atexit
import hashlib
import os
import socket

_DIR = os.environ.get("SB_CAPTURE_DIR")
_METHODS = (b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ", b"OPTIONS ", b"PATCH ", b"PRI * ")
_MAX = 256 * 1024

if _DIR:
    _bufs = {}

    def _flush(sock_id):
        data = bytes(_bufs.pop(sock_id, b""))
        if not data:
            return
        if data.startswith(_METHODS):
            kind = "http1"
        elif data.startswith(b"HTTP/1."):
            kind = "upstream"
        else:
            return
        d = os.path.join(_DIR, kind)
        os.makedirs(d, exist_ok=True)
        name = hashlib.sha1(data).hexdigest()[:16]
        try:
            with open(os.path.join(d, name), "xb") as f:
                f.write(data)
        except FileExistsError:
            pass

    def _record(sock, data):
        try:
            b = _bufs.setdefault(id(sock), bytearray())
            if len(b) < _MAX:
                b.extend(bytes(data)[: _MAX - len(b)])
        except Exception:
            pass

    _orig_sendall = socket.socket.sendall
    _orig_send = socket.socket.send
    _orig_close = socket.socket.close

    def _sendall(self, data, *a):
        _record(self, data)
        return _orig_sendall(self, data, *a)

    def _send(self, data, *a):
        n = _orig_send(self, data, *a)
        _record(self, memoryview(data)[:n] if n else b"")
        return n

    def _close(self):
        _flush(id(self))
        return _orig_close(self)

    socket.socket.sendall = _sendall
    socket.socket.send = _send
    socket.socket.close = _close
    atexit.register(lambda: [_flush(k) for k in list(_bufs)])
