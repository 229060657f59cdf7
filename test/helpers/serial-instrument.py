#!/usr/bin/python3
"""Serial instruments for the serial driver's tests, each simulated in its own process.

Written in Python on pyserial (Debian's python3-serial, so run it with /usr/bin/python3) to be an
implementation independent of the gateway's TypeScript. Only the standard library and pyserial.

Instruments (--kind):
  scale  a Mettler-Toledo MT-SICS subset; requests and replies end in CR LF:
           SI   -> "S S <weight> kg" (stable) / "S D <weight> kg" (dynamic); the weight right-aligned
                   in 10 characters with 3 decimals ("S S     12.345 kg"); "S +" overload,
                   "S -" underload, "S I" busy
           S    -> like SI, but waits up to 1 s for stability, then "S I"
           T    -> "T S <tare> kg" (tare = the current gross); later weights are net (gross - tare)
           Z    -> "Z A"     @ -> 'I4 A "0123456789"' and continuous mode stops
           SIR  -> continuous mode: an SI line every --period ms     anything else -> "ES"
  nmea   a GPS receiver: $GPGGA and $GPRMC every --period ms (from the start), "$...*HH" CR LF with
         the XOR checksum of the bytes between $ and *; time from the wall clock (UTC). Without a fix
         (fix 0) the position fields are empty and RMC says V, as receivers do. It answers nothing.
  ascii  request/response, STX body ETX checksum; the checksum covers body and ETX (--checksum xor,
         sum8, lrc or crc16-modbus; --checksum-format binary: 1 byte, CRC 2 bytes low first; hex:
         2 or 4 uppercase ASCII hex digits, CRC high first). --unit-id 01,02 makes several
         instruments on one multi-drop line, each with its own state:
           <id>RD          -> "<id>RD T=+023.45 P=1013.2 ST=OK"
           <id>SP=<n>      -> "<id>SP OK" (0 <= n <= 100, becomes the setpoint), else "<id>SP ERR"
           <id>GS          -> "<id>GS SP=50.0"
           <id><other>     -> "<id>ERR"
         a wrong checksum -> one NAK byte (0x15, unframed), from the unit whose id the body starts
         with; a frame for an id not served here -> no answer at all.

Transports: --pty PATH (the device end of a socat pty pair; --baud, --bytesize, --parity N|E|O,
--stopbits) or --tcp PORT (0 = any free port; 127.0.0.1; like a Moxa NPort in TCP server mode: one
client at a time, a new connection replaces the old one, which is closed).

Driving it: JSON lines on stdin are commands, JSON lines on stdout are events.
  events   {"event":"ready","port":N}   first; port only with --tcp
           {"event":"request","data":"..."}   every request frame parsed, as latin1 text, delimiters
                                               and checksum included
           {"event":"client"}   a TCP client connected
           {"event":"ack","id":...}   a command was applied (its "id" echoed)
           {"event":"error","message":"...","id":...}   a command was refused (instead of its ack),
                                               or the line failed ("id" then absent)
  commands {"set":{...}}   scale: weight, stable, overload, underload, busy; nmea: lat, lon, fix
                           (0/1/2), speed (knots); ascii: temperature, pressure, status (OK/ALARM),
                           setpoint, for every unit or only for "unit":"02" given beside "set"
           {"mode":"normal|silent|garbage|split|flood|noise"}   persistent misbehaviour
           {"once":"garbage|noise|silent|split|partial|bad-checksum"}   only the next reply or
                           streamed frame misbehaves (bad-checksum: ascii and nmea only)
           {"stream":true|false}   scale continuous mode (as SIR / @); nmea streaming
           {"send":"text"}   these latin1 bytes, verbatim (acknowledged once written)
           {"delay":MS}   reply delay, default 5 ms
Modes: silent never answers or streams; garbage sends random printable bytes ending with the
normal delimiter (CR LF; ascii: ETX and as many random printable bytes as the checksum has);
split writes each frame byte by byte, 2 ms apart; flood writes about 20 kB/s of printable bytes
without any delimiter instead; noise sends what a baud mismatch looks like (0x00, 0xFF, 0x80-0xFE).
The process exits when stdin closes (its parent is gone).
"""

import argparse
import asyncio
import json
import math
import os
import random
import socket
import sys
from datetime import datetime, timezone

import serial

CRLF = b"\r\n"
STX = 0x02
ETX = 0x03
NAK = b"\x15"
PRINTABLE = bytes(range(0x20, 0x7F))
NOISE = bytes([0x00, 0xFF]) + bytes(range(0x80, 0xFF))
MODES = ("normal", "silent", "garbage", "split", "flood", "noise")
ONCE_MODES = ("garbage", "noise", "silent", "split", "partial", "bad-checksum")
MAX_PENDING = 256 * 1024
MAX_INPUT = 64 * 1024
rng = random.Random(20240601)


def emit(event, **fields):
    """One event line on stdout."""
    try:
        sys.stdout.write(json.dumps({"event": event, **fields}, separators=(",", ":")) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        os._exit(0)


def random_bytes(alphabet, count):
    return bytes(rng.choice(alphabet) for _ in range(max(count, 1)))


# --- checksums (over the body and ETX of an ascii frame, or between $ and * in NMEA) ---------


def xor8(data):
    value = 0
    for byte in data:
        value ^= byte
    return value


def sum8(data):
    return sum(data) & 0xFF


def lrc(data):
    return (-sum(data)) & 0xFF


def crc16_modbus(data):
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


CHECKSUMS = {"xor": (xor8, 1), "sum8": (sum8, 1), "lrc": (lrc, 1), "crc16-modbus": (crc16_modbus, 2)}


# --- the line to the gateway ------------------------------------------------------------------


class Line:
    """A byte stream to the gateway on a file descriptor: non-blocking reads handed to on_bytes,
    writes buffered and flushed when the descriptor is writable (a stalled reader never blocks
    the control channel; beyond MAX_PENDING bytes are dropped, as a full UART FIFO would)."""

    def __init__(self, loop):
        self.loop = loop
        self.fd = None
        self.pending = bytearray()
        self.on_bytes = lambda data: None
        self.on_connect = lambda: None

    @property
    def connected(self):
        return self.fd is not None

    def attach(self, fd):
        os.set_blocking(fd, False)
        self.fd = fd
        self.loop.add_reader(fd, self._readable)

    def detach(self):
        if self.fd is None:
            return
        self.loop.remove_reader(self.fd)
        self.loop.remove_writer(self.fd)
        self.fd = None
        self.pending.clear()

    def write(self, data):
        """Queues bytes; False when nothing is connected (the bytes are lost)."""
        if self.fd is None:
            return False
        room = MAX_PENDING - len(self.pending)
        self.pending += data[: max(room, 0)]
        self._flush()
        return True

    async def drain(self):
        while self.pending and self.fd is not None:
            await asyncio.sleep(0.002)

    def _flush(self):
        if self.fd is None:
            return
        try:
            while self.pending:
                written = os.write(self.fd, self.pending)
                del self.pending[:written]
        except BlockingIOError:
            pass
        except OSError as error:
            self.lost(error)
            return
        if self.pending:
            self.loop.add_writer(self.fd, self._flush)
        else:
            self.loop.remove_writer(self.fd)

    def _readable(self):
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        except OSError as error:
            self.lost(error)
            return
        if not data:
            self.lost(None)
            return
        self.on_bytes(data)

    def lost(self, error):
        self.detach()


class PtyLine(Line):
    """The device end of a socat pty pair, configured with pyserial (raw, 8N1 by default)."""

    def __init__(self, loop, path, baud, bytesize, parity, stopbits):
        super().__init__(loop)
        self.port = serial.Serial(
            path,
            baudrate=baud,
            bytesize=bytesize,
            parity={"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}[parity],
            stopbits=stopbits,
            timeout=0,
        )
        self.attach(self.port.fileno())

    def lost(self, error):
        # The pty vanished (socat ended: the adapter was pulled). The instrument stays up, deaf.
        super().lost(error)
        emit("error", message=f"serial line lost: {error or 'end of file'}")
        try:
            self.port.close()
        except OSError:
            pass


class TcpLine(Line):
    """A serial device server (Moxa NPort, TCP server mode) on 127.0.0.1: one client at a time;
    a new connection replaces the old one, which is closed."""

    def __init__(self, loop, port):
        super().__init__(loop)
        self.client = None
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", port))
        self.server.listen(4)
        self.server.setblocking(False)
        self.port = self.server.getsockname()[1]
        loop.add_reader(self.server.fileno(), self._accept)

    def _accept(self):
        try:
            client, _ = self.server.accept()
        except BlockingIOError:
            return
        self._drop_client()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client = client
        self.attach(client.fileno())
        self.on_connect()
        emit("client")

    def _drop_client(self):
        if self.client is None:
            return
        self.detach()
        self.client.close()
        self.client = None

    def lost(self, error):
        self._drop_client()


# --- what goes out: frames through the misbehaviour modes -------------------------------------


class Output:
    """Every outgoing frame passes here, in order, and gets the current mode (or the pending
    "once") applied: dropped, replaced, cut in half or written byte by byte."""

    def __init__(self, line, tail):
        self.line = line
        self.tail = tail  # the delimiter garbage ends with
        self.mode = "normal"
        self.once = None
        self.queue = asyncio.Queue()

    def take_bad_checksum(self):
        """True (once) when the next frame with a checksum is to carry a wrong one (not while
        frames are dropped anyway: it waits for one that goes out)."""
        if self.once == "bad-checksum" and self.mode not in ("silent", "flood"):
            self.once = None
            return True
        return False

    def frame(self, data):
        if not self.line.connected or self.mode == "flood":
            return
        how = self.mode
        if self.once is not None and self.once != "bad-checksum":
            how, self.once = self.once, None
        if how == "silent":
            return
        if how == "garbage":
            tail = self.tail()
            data = random_bytes(PRINTABLE, len(data) - len(tail)) + tail
        elif how == "noise":
            data = random_bytes(NOISE, len(data))
        elif how == "partial":
            data = data[: max(len(data) // 2, 1)]
        self.queue.put_nowait((data, how == "split", None))

    def raw(self, data):
        """Bytes written verbatim, in order with the frames; the future resolves once written."""
        done = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((data, False, done))
        return done

    async def run(self):
        while True:
            data, split, done = await self.queue.get()
            if split:
                for i in range(len(data)):
                    self.line.write(data[i : i + 1])
                    await asyncio.sleep(0.002)
            else:
                self.line.write(data)
            if done is not None:
                await self.line.drain()
                done.set_result(None)

    async def flood(self):
        while True:
            await asyncio.sleep(0.01)
            if self.mode == "flood" and self.line.connected and len(self.line.pending) < 8192:
                self.line.write(random_bytes(PRINTABLE, 200))


# --- the instruments ----------------------------------------------------------------------------


def check_number(key, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key} must be a number")
    return float(value)


def check_bool(key, value):
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false")
    return value


class LineInstrument:
    """Requests are lines ending in CR LF (partial lines wait for the rest)."""

    streaming = False

    def __init__(self, output):
        self.output = output
        self.buffer = bytearray()

    def reset_input(self):
        self.buffer.clear()

    def feed(self, data):
        """Complete request frames in what arrived so far (a frame may span many reads)."""
        self.buffer += data
        frames = []
        while (end := self.buffer.find(CRLF)) >= 0:
            frame = bytes(self.buffer[: end + 2])
            del self.buffer[: end + 2]
            frames.append(frame)
        del self.buffer[:-MAX_INPUT]
        return frames

    def tail(self):
        return CRLF


# Scale: Mettler-Toledo MT-SICS (a subset). The weight stays constant while stable and wiggles
# deterministically by a few grams while not.
WIGGLE = (0.0, 0.003, 0.001, -0.002, -0.001, 0.002)


class Scale(LineInstrument):
    def __init__(self, output):
        super().__init__(output)
        self.state = {"weight": 12.345, "stable": True, "overload": False, "underload": False, "busy": False}
        self.tare = 0.0
        self.tick = 0

    def set(self, values, unit):
        for key, value in values.items():
            if key == "weight":
                self.state[key] = check_number(key, value)
            elif key in ("stable", "overload", "underload", "busy"):
                self.state[key] = check_bool(key, value)
            else:
                raise ValueError(f"a scale has no {key}")

    def gross(self):
        if self.state["stable"]:
            return self.state["weight"]
        self.tick += 1
        return self.state["weight"] + WIGGLE[self.tick % len(WIGGLE)]

    def weight_line(self):
        if self.state["busy"]:
            return "S I"
        if self.state["overload"]:
            return "S +"
        if self.state["underload"]:
            return "S -"
        status = "S" if self.state["stable"] else "D"
        return f"S {status} {self.gross() - self.tare:10.3f} kg"

    async def answer(self, frame):
        command = frame[:-2].decode("latin1")
        if command == "SI":
            reply = self.weight_line()
        elif command == "S":
            reply = await self.stable_weight_line()
        elif command == "T":
            reply = self.tare_line()
        elif command == "Z":
            reply = "Z A"
        elif command == "@":
            self.streaming = False
            reply = 'I4 A "0123456789"'
        elif command == "SIR":
            self.streaming = True
            return None
        else:
            reply = "ES"
        return reply.encode("latin1") + CRLF

    async def stable_weight_line(self):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while not self.state["stable"] and not self.state["busy"] and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if not self.state["stable"]:
            return "S I"
        return self.weight_line()

    def tare_line(self):
        if self.state["busy"]:
            return "T I"
        gross = self.gross()
        self.tare = gross
        return f"T S {gross:10.3f} kg"

    def stream_frames(self):
        return [self.weight_line().encode("latin1") + CRLF]


# NMEA 0183 GPS receiver: GGA and RMC each period; requests are logged, never answered.


def nmea_angle(value, degree_digits, hemispheres):
    """ddmm.mmmm (or dddmm.mmmm) and its hemisphere letter."""
    ten_thousandths = round(abs(value) * 60 * 10000)
    degrees, minutes = divmod(ten_thousandths, 60 * 10000)
    text = f"{degrees:0{degree_digits}d}{minutes // 10000:02d}.{minutes % 10000:04d}"
    return text, hemispheres[0] if value >= 0 else hemispheres[1]


class Nmea(LineInstrument):
    streaming = True

    def __init__(self, output):
        super().__init__(output)
        self.state = {"lat": 48.1173, "lon": 11.516667, "fix": 1, "speed": 0.0}

    def set(self, values, unit):
        for key, value in values.items():
            if key in ("lat", "lon", "speed"):
                self.state[key] = check_number(key, value)
            elif key == "fix":
                if value not in (0, 1, 2) or isinstance(value, bool):
                    raise ValueError("fix must be 0, 1 or 2")
                self.state[key] = int(value)
            else:
                raise ValueError(f"a GPS receiver has no {key}")

    async def answer(self, frame):
        return None

    def sentence(self, fields):
        body = ",".join(fields).encode("latin1")
        checksum = xor8(body)
        if self.output.take_bad_checksum():
            checksum ^= 0x5A
        return b"$" + body + f"*{checksum:02X}".encode() + CRLF

    def position(self):
        if self.state["fix"] == 0:
            return ["", "", "", ""]
        lat, ns = nmea_angle(self.state["lat"], 2, "NS")
        lon, ew = nmea_angle(self.state["lon"], 3, "EW")
        return [lat, ns, lon, ew]

    def gga(self, clock):
        """Time, position, fix quality (0 none, 1 GPS, 2 DGPS), satellites, HDOP, altitude, geoid."""
        fix = self.state["fix"]
        if fix == 0:
            return ["GPGGA", clock, *self.position(), "0", "00", "", "", "M", "", "M", "", ""]
        return ["GPGGA", clock, *self.position(), str(fix), "08", "0.9", "545.4", "M", "46.9", "M", "", ""]

    def rmc(self, clock, now):
        """Time, status (A valid, V void), position, speed (knots), course, date, variation, mode."""
        fix = self.state["fix"]
        if fix == 0:
            return ["GPRMC", clock, "V", *self.position(), "", "", f"{now:%d%m%y}", "", "", "N"]
        speed = f"{self.state['speed']:.1f}"
        return ["GPRMC", clock, "A", *self.position(), speed, "0.0", f"{now:%d%m%y}", "", "", "A" if fix == 1 else "D"]

    def stream_frames(self):
        now = datetime.now(timezone.utc)
        clock = f"{now:%H%M%S}.{now.microsecond // 10000:02d}"
        return [self.sentence(self.gga(clock)), self.sentence(self.rmc(clock, now))]


# ASCII STX/ETX protocol instrument (a temperature/pressure controller), several per line.


class AsciiUnit:
    def __init__(self):
        self.state = {"temperature": 23.45, "pressure": 1013.2, "status": "OK", "setpoint": 50.0}

    def set(self, key, value):
        if key in ("temperature", "pressure", "setpoint"):
            self.state[key] = check_number(key, value)
        elif key == "status":
            if value not in ("OK", "ALARM"):
                raise ValueError('status must be "OK" or "ALARM"')
            self.state[key] = value
        else:
            raise ValueError(f"an ascii instrument has no {key}")

    def reply(self, unit_id, command):
        state = self.state
        if command == "RD":
            return f"{unit_id}RD T={state['temperature']:+07.2f} P={state['pressure']:06.1f} ST={state['status']}"
        if command.startswith("SP="):
            try:
                value = float(command[3:])
            except ValueError:
                value = math.nan
            if not 0 <= value <= 100:
                return f"{unit_id}SP ERR"
            state["setpoint"] = value
            return f"{unit_id}SP OK"
        if command == "GS":
            return f"{unit_id}GS SP={state['setpoint']:.1f}"
        return f"{unit_id}ERR"


class Ascii:
    streaming = False

    def __init__(self, output, unit_ids, algorithm, fmt):
        self.output = output
        self.units = {unit_id: AsciiUnit() for unit_id in unit_ids}
        self.function, width = CHECKSUMS[algorithm]
        self.checksum_length = width * 2 if fmt == "hex" else width
        self.fmt = fmt
        self.buffer = bytearray()

    def set(self, values, unit):
        targets = list(self.units.values()) if unit is None else [self.units.get(unit)]
        if targets == [None]:
            raise ValueError(f"no unit {unit}")
        for key, value in values.items():
            for target in targets:
                target.set(key, value)

    def reset_input(self):
        self.buffer.clear()

    def checksum(self, covered, wrong=False):
        value = self.function(covered) ^ (1 if wrong else 0)
        if self.fmt == "hex":
            return f"{value:0{self.checksum_length}X}".encode()
        return value.to_bytes(self.checksum_length, "little")

    def tail(self):
        return bytes([ETX]) + random_bytes(PRINTABLE, self.checksum_length)

    def feed(self, data):
        """Whole frames: STX, body, ETX, checksum. Bytes before an STX are line noise; an STX
        before the ETX starts the frame again."""
        self.buffer += data
        frames = []
        while True:
            start = self.buffer.find(bytes([STX]))
            if start < 0:
                self.buffer.clear()
                break
            del self.buffer[:start]
            etx = self.buffer.find(bytes([ETX]), 1)
            restart = self.buffer.find(bytes([STX]), 1)
            if restart >= 0 and (etx < 0 or restart < etx):
                del self.buffer[:restart]
                continue
            end = etx + 1 + self.checksum_length
            if etx < 0 or len(self.buffer) < end:
                break
            frames.append(bytes(self.buffer[:end]))
            del self.buffer[:end]
        del self.buffer[:-MAX_INPUT]
        return frames

    def addressed(self, body):
        """The unit id the body starts with, if it is one of ours (the longest that fits)."""
        ids = [unit_id for unit_id in self.units if body.startswith(unit_id)]
        return max(ids, key=len) if ids else None

    async def answer(self, frame):
        covered = frame[1 : len(frame) - self.checksum_length]
        body = covered[:-1].decode("latin1")
        unit_id = self.addressed(body)
        if unit_id is None:
            return None
        if frame[len(frame) - self.checksum_length :] != self.checksum(covered):
            return NAK
        text = self.units[unit_id].reply(unit_id, body[len(unit_id) :])
        reply = text.encode("latin1") + bytes([ETX])
        return bytes([STX]) + reply + self.checksum(reply, self.output.take_bad_checksum())


# --- the process: control channel, request worker, streaming ----------------------------------


class Simulator:
    def __init__(self, args, line):
        self.args = args
        self.line = line
        self.delay = 0.005
        self.requests = asyncio.Queue()
        self.commands = asyncio.Queue()
        self.stdin = bytearray()
        self.output = Output(line, lambda: self.instrument.tail())
        if args.kind == "scale":
            self.instrument = Scale(self.output)
        elif args.kind == "nmea":
            self.instrument = Nmea(self.output)
        else:
            unit_ids = [unit_id for unit_id in args.unit_id.split(",") if unit_id]
            self.instrument = Ascii(self.output, unit_ids, args.checksum, args.checksum_format)
        line.on_bytes = self.received
        line.on_connect = self.instrument.reset_input

    def received(self, data):
        for frame in self.instrument.feed(data):
            emit("request", data=frame.decode("latin1"))
            self.requests.put_nowait(frame)

    async def answer_requests(self):
        """One request after the other, as an instrument's firmware does."""
        while True:
            frame = await self.requests.get()
            reply = await self.instrument.answer(frame)
            if reply is not None:
                await asyncio.sleep(self.delay)
                self.output.frame(reply)

    async def stream(self):
        while True:
            await asyncio.sleep(self.args.period / 1000)
            if self.instrument.streaming and self.line.connected:
                for frame in self.instrument.stream_frames():
                    self.output.frame(frame)

    def stdin_readable(self):
        data = os.read(0, 65536)
        if not data:
            os._exit(0)
        self.stdin += data
        while (end := self.stdin.find(b"\n")) >= 0:
            text = self.stdin[:end].decode("utf-8").strip()
            del self.stdin[: end + 1]
            if text:
                self.commands.put_nowait(text)

    async def control(self):
        while True:
            text = await self.commands.get()
            command = None
            try:
                command = json.loads(text)
                if not isinstance(command, dict):
                    raise ValueError("a command is a JSON object")
                await self.apply(command)
                emit("ack", id=command.get("id"))
            except Exception as error:  # noqa: BLE001 - every refusal is reported, the process goes on
                fields = {"id": command.get("id")} if isinstance(command, dict) else {}
                emit("error", message=str(error), **fields)

    async def apply(self, command):
        actions = ("set", "mode", "once", "stream", "delay", "send")
        unknown = set(command) - set(actions) - {"id", "unit"}
        if unknown or not any(key in command for key in actions):
            raise ValueError(f"unknown command: {json.dumps(command)}")
        if "set" in command:
            if not isinstance(command["set"], dict):
                raise ValueError("set takes an object")
            self.instrument.set(command["set"], command.get("unit"))
        if "mode" in command:
            if command["mode"] not in MODES:
                raise ValueError(f"unknown mode {command['mode']}")
            self.output.mode = command["mode"]
        if "once" in command:
            self.apply_once(command["once"])
        if "stream" in command:
            if self.args.kind == "ascii":
                raise ValueError("an ascii instrument does not stream")
            self.instrument.streaming = check_bool("stream", command["stream"])
        if "delay" in command:
            self.delay = check_number("delay", command["delay"]) / 1000
        if "send" in command:
            if not isinstance(command["send"], str):
                raise ValueError("send takes a string")
            if not self.line.connected:
                raise ValueError("nothing connected to send to")
            await self.output.raw(command["send"].encode("latin1"))

    def apply_once(self, once):
        if once not in ONCE_MODES:
            raise ValueError(f"unknown once mode {once}")
        if once == "bad-checksum" and self.args.kind == "scale":
            raise ValueError("scale replies carry no checksum")
        self.output.once = once

    async def run(self):
        loop = asyncio.get_running_loop()
        loop.add_reader(0, self.stdin_readable)
        tasks = [self.answer_requests(), self.stream(), self.output.run(), self.output.flood(), self.control()]
        await asyncio.gather(*tasks)


def arguments():
    parser = argparse.ArgumentParser(description="A serial instrument for the serial driver's tests.")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--pty", help="the device end of a socat pty pair")
    where.add_argument("--tcp", type=int, help="TCP port on 127.0.0.1 (0: any free one)")
    parser.add_argument("--kind", choices=["scale", "nmea", "ascii"], required=True)
    parser.add_argument("--period", type=float, default=100, help="streaming period in ms")
    parser.add_argument("--unit-id", default="01", help="ascii unit id(s), comma-separated for multi-drop")
    parser.add_argument("--checksum", choices=list(CHECKSUMS), default="xor")
    parser.add_argument("--checksum-format", choices=["binary", "hex"], default="binary")
    parser.add_argument("--baud", type=int, default=9600)
    parser.add_argument("--bytesize", type=int, choices=[5, 6, 7, 8], default=8)
    parser.add_argument("--parity", choices=["N", "E", "O"], default="N")
    parser.add_argument("--stopbits", type=float, choices=[1, 1.5, 2], default=1)
    return parser.parse_args()


async def main():
    args = arguments()
    loop = asyncio.get_running_loop()
    try:
        if args.pty is not None:
            stopbits = 1.5 if args.stopbits == 1.5 else int(args.stopbits)
            line = PtyLine(loop, args.pty, args.baud, args.bytesize, args.parity, stopbits)
            ready = {}
        else:
            line = TcpLine(loop, args.tcp)
            ready = {"port": line.port}
    except (OSError, serial.SerialException, ValueError) as error:
        emit("error", message=f"cannot open the line: {error}")
        sys.exit(1)
    simulator = Simulator(args, line)
    emit("ready", **ready)
    await simulator.run()


if __name__ == "__main__":
    asyncio.run(main())
