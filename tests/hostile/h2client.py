"""A raw HTTP/2 gRPC client for hostile tests, driven by the ``h2`` state machine.

Unlike grpcio it does what a test tells it, including what no well-behaved client does:
open many streams and never read them (flow-control windows are only replenished for
streams the test reads), send a gRPC message header that declares a length it never
sends, write frames larger than the peer allows, reset streams as fast as it opens them,
or vanish with calls in flight. Blocking and single-threaded; every wait has a deadline.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame

from brain._proto.dispatch.v1 import dispatch_pb2 as pb

DISPATCH = "/dispatch.v1.Dispatcher/Dispatch"
INVOKE = "/dispatch.v1.Dispatcher/Invoke"


def grpc_message(payload: bytes) -> bytes:
    """One length-prefixed gRPC message (uncompressed)."""
    return b"\x00" + struct.pack(">I", len(payload)) + payload


@dataclass
class StreamState:
    """What arrived on one stream."""

    headers: dict[str, str] = field(default_factory=dict)
    trailers: dict[str, str] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)
    reset: int | None = None
    ended: bool = False
    #: Replenish this stream's flow-control window as data arrives.
    reading: bool = True

    @property
    def grpc_status(self) -> int | None:
        value = self.trailers.get("grpc-status") or self.headers.get("grpc-status")
        return None if value is None else int(value)

    def messages(self) -> list[bytes]:
        """The complete gRPC messages received so far."""
        out, buf = [], bytes(self.data)
        while len(buf) >= 5:
            (length,) = struct.unpack(">I", buf[1:5])
            if len(buf) < 5 + length:
                break
            out.append(buf[5 : 5 + length])
            buf = buf[5 + length :]
        return out

    def results(self) -> list[pb.ToolResult]:
        """Every ToolResult received so far, from all ResultFrames."""
        return [r for m in self.messages() for r in pb.ResultFrame.FromString(m).results]


class _Connection(h2.connection.H2Connection):
    """h2's client, except that a GOAWAY does not close it.

    ``h2`` moves its state machine to CLOSED on any GOAWAY and then refuses every later
    frame. RFC 9113 §6.8 says otherwise: streams up to the GOAWAY's last stream id go on
    to completion, so a graceful shutdown's GOAWAY is followed by those streams' results
    (and by answers to our PINGs), which a test must be able to read.
    """

    def _receive_goaway_frame(
        self, frame: hyperframe.frame.GoAwayFrame
    ) -> tuple[list[hyperframe.frame.Frame], list[h2.events.Event]]:
        state = self.state_machine.state
        frames, events = super()._receive_goaway_frame(frame)
        self.state_machine.state = state
        return frames, events


class H2Client:
    """One HTTP/2 connection to the sidecar's unix socket (or a TCP port)."""

    def __init__(
        self,
        target: str,
        *,
        authority: str = "localhost",
        timeout: float = 10.0,
        stream_window: int = 65535,
        source_address: str | None = None,
    ):
        """``stream_window`` 0: the server may send no DATA on any stream until the test
        opens that stream's window (:meth:`open_window`). ``source_address``: the local
        address a TCP connection comes from (any of 127.0.0.0/8 reaches a loopback port)."""
        if target.startswith("unix:"):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(target.removeprefix("unix:"))
        else:
            host, port = target.rsplit(":", 1)
            source = (source_address, 0) if source_address else None
            self.sock = socket.create_connection(
                (host, int(port)), timeout=timeout, source_address=source
            )
        self.authority = authority
        self.conn = _Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: stream_window})
        self.timeout = timeout
        self.streams: dict[int, StreamState] = {}
        #: (error code, last stream id) once the server sent GOAWAY.
        self.goaway: tuple[int, int] | None = None
        #: The server closed the connection.
        self.closed = False
        #: What our HTTP/2 state machine refused in the server's bytes.
        self.protocol_error: h2.exceptions.ProtocolError | None = None
        #: A write failed (EPIPE, ECONNRESET): the server closed without reading.
        self.write_error: OSError | None = None
        #: The server acknowledged our SETTINGS (and so applies them).
        self.settings_acked = False
        self.flush()
        # h2 servers apply a client's SETTINGS when they acknowledge them; streams opened
        # before that may start with the old window.
        if not self.wait_for(lambda: self.settings_acked, timeout):
            raise TimeoutError("the server did not acknowledge SETTINGS")

    # -------------------------------------------------------------- sending

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.settimeout(self.timeout)
            self.sock.sendall(data)

    def open(self, path: str = DISPATCH, metadata: dict[str, str] | None = None) -> int:
        """Start a gRPC call; returns its stream id."""
        stream_id = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", self.authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *(metadata or {}).items(),
        ]
        self.conn.send_headers(stream_id, headers)
        self.streams[stream_id] = StreamState()
        self.flush()
        return stream_id

    def send(self, stream_id: int, payload: bytes, *, end: bool = False) -> None:
        """Send bytes on a stream, as far as flow control allows now (the rest waits)."""
        self.conn.send_data(stream_id, payload, end_stream=end)
        self.flush()

    def send_frame(self, stream_id: int, frame: pb.DispatchFrame, *, end: bool = False) -> None:
        self.send(stream_id, grpc_message(frame.SerializeToString()), end=end)

    def open_window(self, stream_id: int | None, size: int = 1 << 20) -> None:
        """Let the server send ``size`` more bytes on the stream (None: the connection)."""
        self.conn.increment_flow_control_window(size, stream_id)
        self.flush()

    def reset(self, stream_id: int) -> None:
        self.conn.reset_stream(stream_id, error_code=h2.errors.ErrorCodes.CANCEL)
        self.flush()

    def send_raw(self, data: bytes) -> None:
        """Bytes straight onto the socket, bypassing the state machine."""
        self.sock.settimeout(self.timeout)
        self.sock.sendall(data)

    def close(self) -> None:
        """Vanish: close the socket without GOAWAY."""
        self.sock.close()

    # ------------------------------------------------------------ receiving

    def pump(self, timeout: float) -> bool:
        """Read and process whatever arrives within ``timeout``; False once closed."""
        if self.closed:
            return False
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return True
        except (ConnectionResetError, BrokenPipeError) as e:
            self.write_error = e
            data = b""
        if not data:
            self.closed = True
            return False
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self.protocol_error = e
            self.closed = True
            return False
        for event in events:
            self._on(event)
        try:
            self.flush()
        except (BrokenPipeError, ConnectionResetError) as e:
            self.write_error = e
            self.closed = True
        return True

    def ping(self) -> None:
        """Send a PING, noting a failed write instead of raising."""
        self.conn.ping(b"tandem!!")
        try:
            self.flush()
        except (BrokenPipeError, ConnectionResetError) as e:
            self.write_error = e

    def _on(self, event: h2.events.Event) -> None:
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.ResponseReceived) and stream is not None:
            stream.headers = dict(event.headers)  # type: ignore[arg-type]
        elif isinstance(event, h2.events.DataReceived) and stream is not None:
            stream.data += event.data
            if stream.reading and event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.TrailersReceived) and stream is not None:
            stream.trailers = dict(event.headers)  # type: ignore[arg-type]
        elif isinstance(event, h2.events.StreamEnded) and stream is not None:
            stream.ended = True
        elif isinstance(event, h2.events.StreamReset) and stream is not None:
            stream.reset = int(event.error_code)
            stream.ended = True
        elif isinstance(event, h2.events.SettingsAcknowledged):
            self.settings_acked = True
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = (int(event.error_code), int(event.last_stream_id))

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Pump until ``predicate()`` holds or ``timeout`` passes."""
        end = time.monotonic() + timeout
        while not predicate():
            left = end - time.monotonic()
            if left <= 0 or not self.pump(min(left, 0.1)):
                return predicate()
        return True

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
