"""A tiny DICOM upper-layer client (PS3.8) in pure Python, for the cases storescu cannot send.

storescu parses what it sends, so it refuses a non-DICOM file and fixes up or refuses a data set
without SOP Instance UID. This client sends ARBITRARY data set bytes in a C-STORE-RQ and reports
the DIMSE status the peer answers with.

    from rawscu import Association, store
    r = store("127.0.0.1", port, "XREG", sop_class, sop_instance, ts, payload)
    r.status == 0xC000, r.error_comment

    with Association.connect("127.0.0.1", port, "XREG", [(sop_class, [ts])]) as a:
        a.c_echo()                       # only if Verification was proposed
        r = a.c_store(sop_class, sop_instance, payload)
    # leaving the block releases (A-RELEASE) the association

Command sets are encoded in implicit VR little endian as PS3.7 requires. P-DATA-TF PDUs are
cut to the peer's maximum PDU length (from its A-ASSOCIATE-AC). No TLS, one outstanding
operation at a time.

Command line (for manual tests):
    /usr/bin/python3 rawscu.py HOST PORT [--aec XREG] [--aet RAWSCU] [--sop-class UID]
        [--sop-instance UID] [--ts UID] FILE|--echo
    FILE is sent as the data set bytes, as is (strip the Part-10 header yourself, or pass
    --part10 to skip the preamble and the meta group).
"""

from __future__ import annotations

import argparse
import dataclasses
import socket
import struct
import sys
from typing import Iterable, Sequence

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.7783.1"
IMPLEMENTATION_VERSION = "XREG_RAWSCU"

# PDU types
A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x04, 0x05, 0x06, 0x07

# Command fields
C_STORE_RQ, C_STORE_RSP, C_ECHO_RQ, C_ECHO_RSP = 0x0001, 0x8001, 0x0030, 0x8030

PRESENTATION_RESULTS = {0: "acceptance", 1: "user-rejection", 2: "no-reason (provider rejection)",
                        3: "abstract-syntax-not-supported", 4: "transfer-syntaxes-not-supported"}


class DicomError(Exception):
    pass


class AssociationRejected(DicomError):
    """A-ASSOCIATE-RJ: result 1 permanent / 2 transient; source; reason (PS3.8 9.3.4)."""

    def __init__(self, result: int, source: int, reason: int):
        self.result, self.source, self.reason = result, source, reason
        super().__init__(f"association rejected: result {result} ({'permanent' if result == 1 else 'transient'}), "
                         f"source {source}, reason {reason}")


class AssociationAborted(DicomError):
    def __init__(self, source: int = -1, reason: int = -1, text: str = ""):
        self.source, self.reason = source, reason
        super().__init__(text or f"association aborted by peer (source {source}, reason {reason})")


class PresentationContextRejected(DicomError):
    pass


@dataclasses.dataclass
class DimseResponse:
    status: int
    error_comment: str
    command: dict  # (group, element) -> raw bytes value

    @property
    def ok(self) -> bool:
        return self.status == 0x0000

    def __str__(self) -> str:
        s = f"status 0x{self.status:04X}"
        return s + (f" ({self.error_comment})" if self.error_comment else "")


def _uid(uid: str) -> bytes:
    b = uid.encode("ascii")
    return b + b"\0" if len(b) % 2 else b


def _ae(title: str) -> bytes:
    b = title.encode("ascii")
    if not 0 < len(b) <= 16:
        raise ValueError(f"AE title {title!r} must have 1 to 16 characters")
    return b.ljust(16, b" ")


def _item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(payload)) + payload


def _element(group: int, elem: int, value: bytes) -> bytes:
    """Implicit VR little endian element."""
    if len(value) % 2:
        raise ValueError("element values have even length")
    return struct.pack("<HHI", group, elem, len(value)) + value


def encode_command(elements: Sequence[tuple[int, bytes]]) -> bytes:
    """elements: (element number in group 0000, value bytes), sorted; adds CommandGroupLength."""
    body = b"".join(_element(0x0000, e, v) for e, v in sorted(elements))
    return _element(0x0000, 0x0000, struct.pack("<I", len(body))) + body


def decode_command(data: bytes) -> dict:
    out = {}
    pos = 0
    while pos + 8 <= len(data):
        group, elem, length = struct.unpack_from("<HHI", data, pos)
        pos += 8
        out[(group, elem)] = data[pos:pos + length]
        pos += length
    return out


def _us(v: bytes) -> int:
    return struct.unpack("<H", v[:2])[0]


def _text(v: bytes | None) -> str:
    return (v or b"").rstrip(b"\0 ").decode("ascii", "replace")


class Association:
    def __init__(self, sock: socket.socket, contexts: dict, peer_max_pdu: int, timeout: float):
        self.sock = sock
        # pcid -> (abstract syntax, accepted transfer syntax or None, result)
        self.contexts = contexts
        self.peer_max_pdu = peer_max_pdu
        self.timeout = timeout
        self._message_id = 0
        self.closed = False

    # ----------------------------------------------------------------------------------------
    @classmethod
    def connect(cls, host: str, port: int, called_ae: str = "ANY-SCP",
                contexts: Iterable[tuple[str, Sequence[str]]] = ((VERIFICATION, (IMPLICIT_LE,)),),
                calling_ae: str = "RAWSCU", max_pdu: int = 16384, timeout: float = 30.0) -> "Association":
        """Open TCP, send A-ASSOCIATE-RQ with one presentation context per (abstract, [ts...])."""
        contexts = list(contexts)
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            items = _item(0x10, APPLICATION_CONTEXT.encode())
            proposed = {}
            for i, (abstract, syntaxes) in enumerate(contexts):
                pcid = 2 * i + 1
                proposed[pcid] = abstract
                sub = _item(0x30, abstract.encode()) + b"".join(_item(0x40, t.encode()) for t in syntaxes)
                items += _item(0x20, struct.pack(">BBBB", pcid, 0, 0, 0) + sub)
            user = (_item(0x51, struct.pack(">I", max_pdu)) + _item(0x52, IMPLEMENTATION_CLASS_UID.encode())
                    + _item(0x55, IMPLEMENTATION_VERSION.encode()))
            items += _item(0x50, user)
            body = struct.pack(">HH", 1, 0) + _ae(called_ae) + _ae(calling_ae) + b"\0" * 32 + items
            sock.sendall(struct.pack(">BBI", A_ASSOCIATE_RQ, 0, len(body)) + body)
            pdu_type, data = _read_pdu(sock)
            if pdu_type == A_ASSOCIATE_RJ:
                _, result, source, reason = struct.unpack(">BBBB", data[:4])
                raise AssociationRejected(result, source, reason)
            if pdu_type == A_ABORT:
                raise AssociationAborted(data[2], data[3])
            if pdu_type != A_ASSOCIATE_AC:
                raise DicomError(f"expected A-ASSOCIATE-AC, got PDU type 0x{pdu_type:02X}")
            accepted = {}
            peer_max_pdu = 0
            pos = 68  # protocol version, reserved, 16+16 AE, 32 reserved
            while pos + 4 <= len(data):
                itype, _, ilen = struct.unpack_from(">BBH", data, pos)
                payload = data[pos + 4:pos + 4 + ilen]
                pos += 4 + ilen
                if itype == 0x21:
                    pcid, _, result, _ = struct.unpack(">BBBB", payload[:4])
                    ts = None
                    if len(payload) > 4 and payload[4] == 0x40:
                        tlen = struct.unpack(">H", payload[6:8])[0]
                        ts = payload[8:8 + tlen].rstrip(b"\0 ").decode()
                    accepted[pcid] = (proposed.get(pcid), ts if result == 0 else None, result)
                elif itype == 0x50:
                    upos = 0
                    while upos + 4 <= len(payload):
                        stype, _, slen = struct.unpack_from(">BBH", payload, upos)
                        if stype == 0x51:
                            peer_max_pdu = struct.unpack(">I", payload[upos + 4:upos + 8])[0]
                        upos += 4 + slen
            return cls(sock, accepted, peer_max_pdu, timeout)
        except BaseException:
            sock.close()
            raise

    def __enter__(self) -> "Association":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.closed:
            return
        if exc_type is None:
            self.release()
        else:
            self.abort()

    # ----------------------------------------------------------------------------------------
    def context_for(self, abstract: str) -> tuple[int, str]:
        for pcid, (a, ts, result) in sorted(self.contexts.items()):
            if a == abstract and result == 0:
                return pcid, ts
        results = {pcid: PRESENTATION_RESULTS.get(r, r) for pcid, (a, _t, r) in self.contexts.items() if a == abstract}
        raise PresentationContextRejected(f"no accepted presentation context for {abstract}: {results}")

    def next_message_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    def send_pdata(self, pcid: int, data: bytes, is_command: bool) -> None:
        """Send data as PDVs, one per P-DATA-TF PDU, each within the peer's maximum PDU."""
        max_value = (self.peer_max_pdu - 6) if self.peer_max_pdu else 1 << 20
        max_value = max(2, max_value)
        chunks = [data[i:i + max_value] for i in range(0, len(data), max_value)] or [b""]
        for i, chunk in enumerate(chunks):
            header = (0x01 if is_command else 0x00) | (0x02 if i == len(chunks) - 1 else 0x00)
            pdv = struct.pack(">IBB", len(chunk) + 2, pcid, header) + chunk
            self.sock.sendall(struct.pack(">BBI", P_DATA_TF, 0, len(pdv)) + pdv)

    def read_command(self) -> dict:
        """Read PDUs until a complete command set arrives; returns it decoded."""
        buf = b""
        while True:
            pdu_type, data = _read_pdu(self.sock)
            if pdu_type == A_ABORT:
                self.closed = True
                self.sock.close()
                raise AssociationAborted(data[2] if len(data) > 2 else -1, data[3] if len(data) > 3 else -1)
            if pdu_type == A_RELEASE_RQ:
                raise DicomError("peer asked to release the association while we waited for a response")
            if pdu_type != P_DATA_TF:
                raise DicomError(f"expected P-DATA-TF, got PDU type 0x{pdu_type:02X}")
            pos = 0
            while pos + 6 <= len(data):
                length, _pcid, header = struct.unpack_from(">IBB", data, pos)
                pos += 4 + length
                if not header & 0x01:
                    continue  # a data set fragment: no response we handle carries one
                buf += data[pos - length + 2:pos]
                if header & 0x02:
                    return decode_command(buf)

    def c_store(self, sop_class_uid: str, sop_instance_uid: str, dataset: bytes, *,
                pcid: int | None = None, priority: int = 0, message_id: int | None = None) -> DimseResponse:
        """Send C-STORE-RQ + dataset (arbitrary bytes, sent as is); return the response."""
        if pcid is None:
            pcid, _ts = self.context_for(sop_class_uid)
        mid = message_id if message_id is not None else self.next_message_id()
        cmd = encode_command([
            (0x0002, _uid(sop_class_uid)),
            (0x0100, struct.pack("<H", C_STORE_RQ)),
            (0x0110, struct.pack("<H", mid)),
            (0x0700, struct.pack("<H", priority)),
            (0x0800, struct.pack("<H", 0x0000)),  # a data set follows
            (0x1000, _uid(sop_instance_uid)),
        ])
        self.send_pdata(pcid, cmd, True)
        self.send_pdata(pcid, dataset, False)
        rsp = self.read_command()
        field = _us(rsp.get((0, 0x0100), b"\0\0"))
        if field != C_STORE_RSP:
            raise DicomError(f"expected C-STORE-RSP, got command field 0x{field:04X}")
        if (0, 0x0120) in rsp and _us(rsp[(0, 0x0120)]) != mid:
            raise DicomError(f"response to message {_us(rsp[(0, 0x0120)])}, expected {mid}")
        return DimseResponse(_us(rsp[(0, 0x0900)]), _text(rsp.get((0, 0x0902))), rsp)

    def c_echo(self) -> DimseResponse:
        pcid, _ts = self.context_for(VERIFICATION)
        mid = self.next_message_id()
        cmd = encode_command([
            (0x0002, _uid(VERIFICATION)),
            (0x0100, struct.pack("<H", C_ECHO_RQ)),
            (0x0110, struct.pack("<H", mid)),
            (0x0800, struct.pack("<H", 0x0101)),  # no data set
        ])
        self.send_pdata(pcid, cmd, True)
        rsp = self.read_command()
        return DimseResponse(_us(rsp[(0, 0x0900)]), _text(rsp.get((0, 0x0902))), rsp)

    def release(self) -> None:
        if self.closed:
            return
        try:
            self.sock.sendall(struct.pack(">BBI", A_RELEASE_RQ, 0, 4) + b"\0" * 4)
            pdu_type, _ = _read_pdu(self.sock)
            if pdu_type != A_RELEASE_RP:
                raise DicomError(f"expected A-RELEASE-RP, got PDU type 0x{pdu_type:02X}")
        finally:
            self.closed = True
            self.sock.close()

    def abort(self) -> None:
        if self.closed:
            return
        try:
            self.sock.sendall(struct.pack(">BBIBBBB", A_ABORT, 0, 4, 0, 0, 0, 0))
        except OSError:
            pass
        finally:
            self.closed = True
            self.sock.close()


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise AssociationAborted(text=f"connection closed by peer ({len(buf)} of {n} bytes read)")
        buf += chunk
    return bytes(buf)


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    pdu_type, _, length = struct.unpack(">BBI", _recv_exact(sock, 6))
    return pdu_type, _recv_exact(sock, length)


def store(host: str, port: int, called_ae: str, sop_class_uid: str, sop_instance_uid: str,
          transfer_syntax: str, dataset: bytes, *, calling_ae: str = "RAWSCU", max_pdu: int = 16384,
          timeout: float = 30.0) -> DimseResponse:
    """One association, one C-STORE of dataset in transfer_syntax, release. Returns the response."""
    with Association.connect(host, port, called_ae, [(sop_class_uid, [transfer_syntax])],
                             calling_ae=calling_ae, max_pdu=max_pdu, timeout=timeout) as a:
        return a.c_store(sop_class_uid, sop_instance_uid, dataset)


def echo(host: str, port: int, called_ae: str, *, calling_ae: str = "RAWSCU", timeout: float = 30.0) -> DimseResponse:
    with Association.connect(host, port, called_ae, [(VERIFICATION, [IMPLICIT_LE])],
                             calling_ae=calling_ae, timeout=timeout) as a:
        return a.c_echo()


def strip_part10(data: bytes) -> bytes:
    """The data set of a Part-10 file: skip the 128-byte preamble, DICM and group 0002."""
    if data[128:132] != b"DICM":
        return data
    pos = 132
    while pos + 8 <= len(data):
        group = struct.unpack_from("<H", data, pos)[0]
        if group != 0x0002:
            break
        vr = data[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            length = struct.unpack_from("<I", data, pos + 8)[0]
            pos += 12 + length
        else:
            length = struct.unpack_from("<H", data, pos + 6)[0]
            pos += 8 + length
    return data[pos:]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description="send arbitrary bytes as a C-STORE data set")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("file", nargs="?")
    p.add_argument("--aec", default="ANY-SCP")
    p.add_argument("--aet", default="RAWSCU")
    p.add_argument("--sop-class", default="1.2.840.10008.5.1.4.1.1.1")
    p.add_argument("--sop-instance", default="1.2.826.0.1.3680043.8.498.7783.99")
    p.add_argument("--ts", default=EXPLICIT_LE)
    p.add_argument("--part10", action="store_true", help="FILE is a Part-10 file: send its data set")
    p.add_argument("--echo", action="store_true")
    a = p.parse_intermixed_args(argv[1:])
    try:
        if a.echo:
            r = echo(a.host, a.port, a.aec, calling_ae=a.aet)
        else:
            data = open(a.file, "rb").read()
            if a.part10:
                data = strip_part10(data)
            r = store(a.host, a.port, a.aec, a.sop_class, a.sop_instance, a.ts, data, calling_ae=a.aet)
    except DicomError as e:
        print(f"rawscu: {e}", file=sys.stderr)
        return 1
    print(r)
    return 0 if r.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
