#!/usr/bin/python3
"""A Sparkplug B 3.0 host application for the tests, checking an edge node as the TCK would.

Written in Python on Debian's python3-paho-mqtt (1.6) and python3-protobuf (3.21), so run it with
/usr/bin/python3. It shares no code with the gateway's TypeScript codec: its protobuf module is
generated at start by Google's protoc from the schema printed in the specification
(test/helpers/sparkplug_b.proto, or --proto PATH) into a temporary folder.

It connects to --url (mqtt://host:port, MQTT 5 so that retain-as-published shows the publisher's
retain flag), subscribes to spBv1.0/<group>/# at QoS 1 (a delivery's QoS is the minimum of the
publish and the subscription QoS, so a QoS 0 publish arrives as 0 and a QoS 1 one as 1), decodes
every message, keeps a model of the group and reports each rule an edge node breaks. With
--host-id H it is the primary host: its will is the retained QoS 1 `spBv1.0/STATE/H`
{"online":false,"timestamp":T} and, once subscribed, it publishes {"online":true,"timestamp":T}
there (retained, QoS 1; the same T, [tck-id-host-topic-phid-birth-payload-timestamp]).

Checks (rule ids as the specification prints them; "plc2mqtt-…" where no TCK id covers it; every
violation is a MUST unless its level says "should"):
  topics       spBv1.0/group/TYPE/node[/device]                     tck-id-topic-structure
               device id on DBIRTH/DDEATH/DDATA/DCMD only   tck-id-topic-structure-namespace-device-id-
                                                             associated-message-types / -non-associated-…
  payload      protobuf that decodes              plc2mqtt-payload-decode (NBIRTH/DBIRTH: the
                                                  message-flow …-nbirth-payload / …-dbirth-payload ids)
  QoS, retain  NBIRTH/DBIRTH/NDATA/DDATA QoS 0     tck-id-payloads-{nbirth,dbirth,ndata,ddata}-qos
               and retain false                    tck-id-payloads-{…}-retain
               DDEATH QoS 0, retain false          tck-id-topics-ddeath-mqtt
               NDEATH QoS 1, retain false          tck-id-payloads-ndeath-will-message-qos / -retain
  seq          NBIRTH seq present, = 0             tck-id-payloads-nbirth-seq, tck-id-topics-nbirth-seq-num
               DBIRTH/NDATA/DDATA/DDEATH present   tck-id-payloads-{dbirth,ndata,ddata,ddeath}-seq
               and previous + 1 mod 256            tck-id-payloads-{…}-seq-inc (then resynchronised)
               NDEATH without seq                  tck-id-payloads-ndeath-seq
  timestamps   payload timestamp on NBIRTH/DBIRTH/NDATA/DDATA/DDEATH  tck-id-payloads-{type}-timestamp
               on every metric of NBIRTH/DBIRTH/NDATA/DDATA   tck-id-payloads-name-birth-data-requirement
  bdSeq        NBIRTH has bdSeq                    tck-id-payloads-nbirth-bdseq
               of datatype Int64 in long_value     tck-id-message-flow-edge-node-birth-publish-nbirth-payload-bdSeq
               unchanged on a rebirth we requested tck-id-operational-behavior-data-commands-rebirth-action-3
               NDEATH: only the bdSeq metric       tck-id-topics-ndeath-payload
               of Int64                            tck-id-message-flow-edge-node-birth-publish-will-message-payload-bdSeq
               = the last NBIRTH's bdSeq           tck-id-payloads-ndeath-bdseq (the host then ignores
                                                   the NDEATH, as a real host does: the node stays online)
  rebirth      NBIRTH has Node Control/Rebirth     tck-id-payloads-nbirth-rebirth-req
               Boolean, false, without alias       tck-id-operational-behavior-data-commands-rebirth-
                                                   datatype / -value / -name-aliases
  births       every metric has a name             tck-id-payloads-alias-birth-requirement (with an
                                                   alias), else tck-id-payloads-name-requirement
               and a datatype                      tck-id-payloads-metric-datatype-req
               that is a Sparkplug one             tck-id-payloads-metric-datatype-value
               a value, or is_null without value   tck-id-operational-behavior-data-publish-{nbirth,dbirth}-values
               aliases unique over NBIRTH + DBIRTHs tck-id-payloads-alias-uniqueness
               property values have a type          tck-id-payloads-metric-propertyvalue-type-req
  order        DBIRTH after the session's NBIRTH   tck-id-message-flow-device-birth-publish-nbirth-wait
               a new device's DBIRTH before any NDATA/DDATA of the session   tck-id-payloads-dbirth-order
               NDATA after NBIRTH                  tck-id-payloads-ndata-order
               DDATA after the device's DBIRTH (and not after its DDEATH)   tck-id-payloads-ddata-order
               non-historical metric timestamps in order   tck-id-operational-behavior-data-publish-
                                                   {nbirth,dbirth}-order
  data         a metric declared in a birth        tck-id-operational-behavior-data-publish-{nbirth,dbirth}
               by alias only when it has one       tck-id-payloads-alias-data-cmd-requirement
               named when it has no alias          tck-id-payloads-name-requirement
               no datatype (should)                tck-id-payloads-metric-datatype-not-req
               the birth's datatype if one is sent plc2mqtt-datatype-mismatch
               a changed value (should)            tck-id-operational-behavior-data-publish-{nbirth,dbirth}-change
                                                   (is_historical metrics exempt)
  values       in the field of the datatype        plc2mqtt-value-field (UInt32 in long_value accepted)
               within the datatype's range         plc2mqtt-value-range (IntN in int_value either
                                                   zero-extended or sign-extended to 32 bits, as Tahu)
  properties   keys and values of equal length     tck-id-payloads-propertyset-keys-array-size
               Quality: type Int32 (3)             tck-id-payloads-propertyset-quality-value-type
               int_value 0, 192 or 500             tck-id-payloads-propertyset-quality-value-value
NCMD and DCMD (a host's messages, ours included) are reported as messages but not checked.

Values in events: integers beyond 2^53 as decimal strings, Bytes/File as base64, arrays as lists,
DataSet as {columns, types, rows}, Float/Double NaN and infinities as "NaN"/"Infinity"/"-Infinity".

Driving it: JSON lines on stdin are commands, JSON lines on stdout are events.
  events   {"event":"ready"}   first, once subscribed (and the STATE birth acknowledged)
           {"event":"message","topic","type","node","device","seq","timestamp","qos","retain",
            "metrics":[{name, named, alias, datatype, typed, value, isNull, isHistorical,
                        isTransient, timestamp, properties}]}   every message on spBv1.0/<group>/#;
                 name/datatype are resolved through the births' aliases, named/typed say whether
                 they were on the wire; "error" instead of metrics when the payload did not decode
           {"event":"violation","rule":"tck-id-…","level":"must"|"should","message":"…",
            "topic":"…"}   every rule broken
           {"event":"snapshot","id":…,"model":{"nodes":{N:{online, born, bdSeq, seq, births,
            deaths, historical, metrics:{name:{alias, datatype, value, isNull, timestamp, quality,
            properties, stale}}, devices:{D:{born, dead, seq, births, deaths, historical,
            metrics}}}}}}   values are the last live ones: is_historical metrics only count in
                 "historical"; dead: by its DDEATH or its node's NDEATH; stale: its device or
                 node died since
           {"event":"connection","connected":bool}   the broker connection was lost / is back
           {"event":"ack","id":…}   a command was applied (its "id" echoed)
           {"event":"error","message":"…","id":…}   a command was refused (instead of its ack), or
                 the line failed ("id" then absent)
  commands {"rebirth":true, "node"?:N}   NCMD Node Control/Rebirth = true by name, QoS 0 (as the TCK)
           {"dcmd":{"device":D, "metric":name, "value":v, "byAlias"?:bool, "datatype"?:bool},
            "node"?:N}   DCMD encoded as the DBIRTH's datatype says; by alias (no name) with byAlias;
                 the datatype on the wire only with "datatype":true (it SHOULD NOT be sent); 64-bit
                 values may be decimal strings, Bytes base64
           {"ncmd":{"metric":name, "value":v, "byAlias"?:bool}, "node"?:N}   likewise for a node metric
           {"state":"online"|"offline", "timestamp"?:ms}   primary host STATE, retained QoS 1
                 (the timestamp defaults to now)
           {"snapshot":true}   a snapshot event, then the ack
The process exits when stdin closes (its parent is gone); as primary host it first publishes its
OFFLINE STATE with its birth timestamp. On SIGTERM it just ends: the broker sends its will.
"""

import argparse
import base64
import importlib
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

NAMESPACE = "spBv1.0"
NODE_TYPES = ("NBIRTH", "NDEATH", "NDATA", "NCMD")
DEVICE_TYPES = ("DBIRTH", "DDEATH", "DDATA", "DCMD")
HOST_TYPES = ("NCMD", "DCMD")
REBIRTH = "Node Control/Rebirth"
SAFE = 2**53 - 1

# Datatypes (Sparkplug 3.0 §6.4.16) and the value field each uses.
DATATYPE_NAMES = {
    0: "Unknown", 1: "Int8", 2: "Int16", 3: "Int32", 4: "Int64", 5: "UInt8", 6: "UInt16", 7: "UInt32",
    8: "UInt64", 9: "Float", 10: "Double", 11: "Boolean", 12: "String", 13: "DateTime", 14: "Text",
    15: "UUID", 16: "DataSet", 17: "Bytes", 18: "File", 19: "Template", 20: "PropertySet",
    21: "PropertySetList", 22: "Int8Array", 23: "Int16Array", 24: "Int32Array", 25: "Int64Array",
    26: "UInt8Array", 27: "UInt16Array", 28: "UInt32Array", 29: "UInt64Array", 30: "FloatArray",
    31: "DoubleArray", 32: "BooleanArray", 33: "StringArray", 34: "DateTimeArray",
}
SMALL_INTS = {1: (8, True), 2: (16, True), 3: (32, True), 5: (8, False), 6: (16, False), 7: (32, False)}
ARRAY_FORMATS = {22: "b", 23: "h", 24: "i", 25: "q", 26: "B", 27: "H", 28: "I", 29: "Q", 30: "f", 31: "d", 34: "q"}
INT64, BOOLEAN = 4, 11
QUALITY_CODES = (0, 192, 500)


def field_of(datatype):
    """The value field a datatype's value travels in (metrics; property values use the same names)."""
    if datatype in SMALL_INTS:
        return "int_value"
    if datatype in (4, 8, 13):
        return "long_value"
    return {
        9: "float_value", 10: "double_value", 11: "boolean_value", 12: "string_value", 14: "string_value",
        15: "string_value", 16: "dataset_value", 17: "bytes_value", 18: "bytes_value", 19: "template_value",
    }.get(datatype, "bytes_value" if 22 <= datatype <= 34 else None)


output_lock = threading.Lock()


def emit(event, **fields):
    """One event line on stdout (from the MQTT thread or the command thread)."""
    line = json.dumps({"event": event, **fields}, separators=(",", ":"), allow_nan=False)
    with output_lock:
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            os._exit(0)


def now_ms():
    return int(time.time() * 1000)


def json_number(value):
    """A number JSON (and JavaScript) carries exactly: big integers as strings, non-finite floats as names."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -SAFE <= value <= SAFE else str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


# --- the protobuf module, generated by protoc ---------------------------------------------------


def load_schema(proto_path):
    """Runs protoc on the .proto into a temporary folder and imports the generated module."""
    out = tempfile.mkdtemp(prefix="sparkplug-host-")
    folder, name = os.path.split(os.path.abspath(proto_path))
    try:
        subprocess.run(["protoc", f"--python_out={out}", "-I", folder, os.path.join(folder, name)], check=True, capture_output=True)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    sys.path.insert(0, out)
    try:
        return importlib.import_module(name[: -len(".proto")] + "_pb2")
    finally:
        sys.path.remove(out)
        shutil.rmtree(out, ignore_errors=True)  # the module is loaded; nothing is left behind


# --- decoding values ------------------------------------------------------------------------------


class ValueProblem(Exception):
    def __init__(self, rule, message):
        super().__init__(message)
        self.rule = rule


def unpack_array(datatype, data):
    if datatype in ARRAY_FORMATS:
        size = struct.calcsize("<" + ARRAY_FORMATS[datatype])
        if len(data) % size:
            raise ValueProblem("plc2mqtt-value-range", f"{len(data)} bytes are not a whole {DATATYPE_NAMES[datatype]}")
        return [json_number(v) for (v,) in struct.iter_unpack("<" + ARRAY_FORMATS[datatype], data)]
    if datatype == 32:  # BooleanArray: a 4-byte LE count, then the bits MSB first
        if len(data) < 4:
            raise ValueProblem("plc2mqtt-value-range", "a BooleanArray needs its 4-byte count")
        (count,) = struct.unpack_from("<I", data)
        if len(data) - 4 < (count + 7) // 8:
            raise ValueProblem("plc2mqtt-value-range", f"a BooleanArray of {count} has {len(data) - 4} bytes")
        return [bool(data[4 + i // 8] & (128 >> (i % 8))) for i in range(count)]
    if datatype == 33:  # StringArray: NUL-terminated UTF-8
        if data and not data.endswith(b"\0"):
            raise ValueProblem("plc2mqtt-value-range", "a StringArray ends with NUL")
        return [part.decode("utf-8") for part in data.split(b"\0")[:-1]]
    raise ValueProblem("plc2mqtt-value-field", f"no array type {datatype}")


def scalar_value(datatype, field, raw):
    """A wire scalar as its datatype's value; raises ValueProblem for a wrong field or range."""
    expected = field_of(datatype)
    if field != expected and not (datatype == 7 and field == "long_value"):
        raise ValueProblem("plc2mqtt-value-field", f"a {DATATYPE_NAMES.get(datatype, datatype)} value belongs in {expected}, not {field}")
    if datatype in SMALL_INTS:
        bits, signed = SMALL_INTS[datatype]
        low = raw & ((1 << bits) - 1)
        value = low - (1 << bits) if signed and low >> (bits - 1) else low
        # Zero-extended, or (signed) sign-extended to 32 bits as Tahu writes it.
        if raw != low and not (signed and raw == value & 0xFFFFFFFF):
            raise ValueProblem("plc2mqtt-value-range", f"{raw} is not a {DATATYPE_NAMES[datatype]}")
        return value
    if datatype == INT64:
        return json_number(raw - (1 << 64) if raw >> 63 else raw)
    if datatype in (8, 13):
        return json_number(raw)
    if datatype in (9, 10):
        return json_number(raw)
    if datatype in (17, 18):
        return base64.b64encode(raw).decode("ascii")
    if 22 <= datatype <= 34:
        return unpack_array(datatype, raw)
    return raw


def raw_value(message):
    """(field, value) of a message's value oneof, or (None, None)."""
    field = message.WhichOneof("value")
    return (field, getattr(message, field)) if field else (None, None)


def dataset_value(dataset):
    types = list(dataset.types)
    rows = []
    for row in dataset.rows:
        cells = []
        for index, element in enumerate(row.elements):
            field, raw = raw_value(element)
            if field is None:
                cells.append(None)
                continue
            kind = types[index] if index < len(types) else None
            cells.append(scalar_value(kind, field, raw) if kind is not None else json_number(raw))
        rows.append(cells)
    return {"columns": list(dataset.columns), "types": types, "rows": rows}


def metric_value(metric, datatype):
    field, raw = raw_value(metric)
    if field is None:
        return None
    if datatype is None:  # unknown metric: as the field holds it
        return base64.b64encode(raw).decode("ascii") if field == "bytes_value" else json_number(raw) if not hasattr(raw, "ListFields") else None
    if field == "dataset_value":
        if datatype != 16:
            raise ValueProblem("plc2mqtt-value-field", f"a {DATATYPE_NAMES.get(datatype, datatype)} value cannot be a DataSet")
        return dataset_value(raw)
    if field in ("template_value", "extension_value"):
        return {"unsupported": field}
    return scalar_value(datatype, field, raw)


# --- the model ------------------------------------------------------------------------------------


class Device:
    def __init__(self):
        self.born = False
        self.dead = False
        self.seq = None
        self.births = 0
        self.births_in_session = 0
        self.deaths = 0
        self.historical = 0
        self.metrics = {}  # name -> metric entry
        self.aliases = {}  # alias -> name

    def to_json(self):
        return {
            "born": self.born, "dead": self.dead, "seq": self.seq, "births": self.births, "deaths": self.deaths,
            "historical": self.historical, "metrics": self.metrics,
        }


class Node(Device):
    def __init__(self):
        super().__init__()
        self.online = False
        self.bd_seq = None
        self.devices = {}
        self.node_aliases = {}  # alias -> (device id or None, name), node-wide
        self.data_seen = False  # an NDATA or DDATA in this session
        self.rebirth_requested = False

    def device(self, device_id):
        return self.devices.setdefault(device_id, Device())

    def to_json(self):
        return {
            **super().to_json(), "online": self.online, "bdSeq": self.bd_seq,
            "devices": {name: device.to_json() for name, device in self.devices.items()},
        }


class Host:
    def __init__(self, args, pb):
        self.args = args
        self.pb = pb
        self.lock = threading.RLock()
        self.nodes = {}
        self.subscribed = threading.Event()
        self.birth_timestamp = now_ms()
        self.state = (True, self.birth_timestamp)
        url = urlparse(args.url)
        if url.scheme not in ("mqtt", "tcp", "mqtts"):
            raise ValueError(f"unsupported URL {args.url}")
        self.client = mqtt.Client(client_id=args.client_id or f"sparkplug-host-{os.getpid()}", protocol=mqtt.MQTTv5)
        if url.scheme == "mqtts":
            self.client.tls_set(ca_certs=args.ca)
        if args.username is not None:
            self.client.username_pw_set(args.username, args.password)
        if args.host_id:
            self.client.will_set(self.state_topic(), self.state_payload(False, self.birth_timestamp), qos=1, retain=True)
        self.client.on_connect = self.on_connect
        self.client.on_disconnect = self.on_disconnect
        self.client.on_subscribe = self.on_subscribe
        self.client.on_message = self.on_message
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or (8883 if url.scheme == "mqtts" else 1883)
        self.was_connected = False

    # --- MQTT callbacks (the paho thread) ---

    def start(self):
        self.client.connect(self.host, self.port, keepalive=30, clean_start=True)
        self.client.loop_start()

    def on_connect(self, client, userdata, flags, rc, properties=None):
        if rc != 0:
            emit("error", message=f"the broker refused the connection: {rc}")
            return
        client.subscribe(f"{NAMESPACE}/{self.args.group}/#", options=SubscribeOptions(qos=1, retainAsPublished=True))
        if self.was_connected:
            emit("connection", connected=True)
        self.was_connected = True

    def on_disconnect(self, client, userdata, rc, properties=None):
        emit("connection", connected=False)

    def on_subscribe(self, client, userdata, mid, granted, properties=None):
        if self.args.host_id and self.subscribed.is_set():
            # Connected again: the STATE as it was (the first one is published by main()).
            self.publish_state(self.state[0], self.state[1], wait=False)
        self.subscribed.set()

    def on_message(self, client, userdata, message):
        try:
            with self.lock:
                self.handle(message.topic, message.payload, message.qos, bool(message.retain))
        except Exception as error:  # noqa: BLE001 - a bug here must show, not kill the MQTT thread
            emit("error", message=f"handling {message.topic}: {type(error).__name__}: {error}")

    # --- STATE ---

    def state_topic(self):
        return f"{NAMESPACE}/STATE/{self.args.host_id}"

    @staticmethod
    def state_payload(online, timestamp):
        return json.dumps({"online": online, "timestamp": timestamp}, separators=(",", ":"))

    def publish_state(self, online, timestamp, wait=True):
        self.state = (online, timestamp)
        info = self.client.publish(self.state_topic(), self.state_payload(online, timestamp), qos=1, retain=True)
        if wait:
            info.wait_for_publish(10)
            if not info.is_published():
                raise RuntimeError("the STATE message was not acknowledged within 10 s")

    # --- checks ---

    def violation(self, topic, rule, message, level="must"):
        emit("violation", rule=rule, level=level, message=message, topic=topic)

    def handle(self, topic, payload, qos, retain):
        parts = topic.split("/")
        if len(parts) < 4 or parts[0] != NAMESPACE or parts[2] not in NODE_TYPES + DEVICE_TYPES or "" in parts or len(parts) > 5:
            self.violation(topic, "tck-id-topic-structure", f"not spBv1.0/group/TYPE/node[/device]: {topic}")
            return
        kind, node_id = parts[2], parts[3]
        device_id = parts[4] if len(parts) == 5 else None
        if kind in DEVICE_TYPES and device_id is None:
            self.violation(topic, "tck-id-topic-structure-namespace-device-id-associated-message-types", f"{kind} without a device id")
            return
        if kind in NODE_TYPES and device_id is not None:
            self.violation(topic, "tck-id-topic-structure-namespace-device-id-non-associated-message-types", f"{kind} with a device id")
            return
        event = {"topic": topic, "type": kind, "node": node_id, "device": device_id, "qos": qos, "retain": retain}
        try:
            decoded = self.pb.Payload()
            decoded.ParseFromString(payload)
        except Exception as error:  # noqa: BLE001 - protobuf's DecodeError and friends
            rule = {
                "NBIRTH": "tck-id-message-flow-edge-node-birth-publish-nbirth-payload",
                "DBIRTH": "tck-id-message-flow-device-birth-publish-dbirth-payload",
            }.get(kind, "plc2mqtt-payload-decode")
            emit("message", **event, error=str(error))
            self.violation(topic, rule, f"the payload is not a Sparkplug B protobuf: {error}")
            return
        node = self.nodes.setdefault(node_id, Node())
        checker = Check(self, topic, kind, node, device_id, decoded)
        if kind not in HOST_TYPES:
            checker.mqtt_flags(qos, retain)
            checker.run()
        metrics = checker.metric_events()
        emit(
            "message", **event, seq=decoded.seq if decoded.HasField("seq") else None,
            timestamp=json_number(decoded.timestamp) if decoded.HasField("timestamp") else None, metrics=metrics,
        )

    # --- commands (the stdin thread) ---

    def node_for(self, command):
        node_id = command.get("node", self.args.node)
        if not node_id:
            raise ValueError("no node: give --node or a \"node\" in the command")
        return node_id

    def publish_command(self, topic, metrics):
        payload = self.pb.Payload()
        payload.timestamp = now_ms()  # [tck-id-topics-ncmd-timestamp] / [tck-id-topics-dcmd-timestamp]
        payload.metrics.extend(metrics)
        info = self.client.publish(topic, payload.SerializeToString(), qos=0, retain=False)
        info.wait_for_publish(10)
        if not info.is_published():
            raise RuntimeError(f"could not publish {topic}")

    def command_metric(self, known, spec):
        """A Metric for a command: `known` is the birth's entry for the metric."""
        datatype = known["datatype"]
        metric = self.pb.Payload.Metric()
        if spec.get("byAlias"):
            if known["alias"] is None:
                raise ValueError(f"{spec['metric']} has no alias in its birth")
            metric.alias = int(known["alias"])
        else:
            metric.name = spec["metric"]
        if spec.get("datatype"):
            metric.datatype = datatype
        metric.timestamp = now_ms()
        encode_value(metric, datatype, spec.get("value"), spec["metric"])
        return metric

    def apply(self, command):
        actions = ("rebirth", "dcmd", "ncmd", "state", "snapshot")
        unknown = set(command) - set(actions) - {"id", "node", "timestamp"}
        if unknown or not any(key in command for key in actions):
            raise ValueError(f"unknown command: {json.dumps(command)}")
        if "rebirth" in command:
            if command["rebirth"] is not True:
                raise ValueError("rebirth takes true")
            node_id = self.node_for(command)
            metric = self.pb.Payload.Metric()
            metric.name = REBIRTH  # by name, without alias, as the TCK sends it
            metric.datatype = BOOLEAN
            metric.boolean_value = True
            with self.lock:
                self.nodes.setdefault(node_id, Node()).rebirth_requested = True
            self.publish_command(f"{NAMESPACE}/{self.args.group}/NCMD/{node_id}", [metric])
        for key in ("dcmd", "ncmd"):
            if key not in command:
                continue
            spec = command[key]
            if not isinstance(spec, dict) or not isinstance(spec.get("metric"), str):
                raise ValueError(f"{key} takes {{device?, metric, value, byAlias?}}")
            node_id = self.node_for(command)
            with self.lock:
                node = self.nodes.get(node_id)
                owner = node
                if node is not None and key == "dcmd":
                    owner = node.devices.get(spec.get("device"))
                known = owner.metrics.get(spec["metric"]) if owner is not None else None
                if known is None or (key == "dcmd" and not owner.births):
                    where = f"device {spec.get('device')}" if key == "dcmd" else "the node"
                    raise ValueError(f"no birth of {where} of {node_id} declares {spec['metric']}")
                metric = self.command_metric(known, spec)
            if key == "dcmd":
                if not isinstance(spec.get("device"), str):
                    raise ValueError("dcmd needs a device")
                topic = f"{NAMESPACE}/{self.args.group}/DCMD/{node_id}/{spec['device']}"
            else:
                topic = f"{NAMESPACE}/{self.args.group}/NCMD/{node_id}"
            self.publish_command(topic, [metric])
        if "state" in command:
            if not self.args.host_id:
                raise ValueError("STATE needs --host-id")
            if command["state"] not in ("online", "offline"):
                raise ValueError("state is online or offline")
            timestamp = command.get("timestamp", now_ms())
            if isinstance(timestamp, bool) or not isinstance(timestamp, int):
                raise ValueError("timestamp is an integer (ms)")
            self.publish_state(command["state"] == "online", timestamp)
        if "snapshot" in command:
            with self.lock:
                model = {"nodes": {name: node.to_json() for name, node in self.nodes.items()}}
            emit("snapshot", id=command.get("id"), model=model)

    def shutdown(self):
        if self.args.host_id and self.client.is_connected():
            try:
                self.publish_state(False, self.birth_timestamp)
            except Exception:  # noqa: BLE001 - the parent is gone; the will says the same
                pass
        self.client.disconnect()
        self.client.loop_stop()


def encode_value(metric, datatype, value, name):
    """Sets a command metric's value field from a JSON value, as `datatype` requires."""
    what = f"{name} ({DATATYPE_NAMES.get(datatype, datatype)})"
    if value is None:
        metric.is_null = True
        return
    if datatype in SMALL_INTS or datatype in (4, 8, 13):
        if isinstance(value, str):
            value = int(value, 10)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{what} takes an integer")
        if datatype in SMALL_INTS:
            bits, signed = SMALL_INTS[datatype]
            low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
            if not low <= value <= high:
                raise ValueError(f"{what}: {value} is out of range")
            metric.int_value = value & 0xFFFFFFFF  # negatives sign-extended to 32 bits, as Tahu
        else:
            low, high = (-(1 << 63), (1 << 63) - 1) if datatype == INT64 else (0, (1 << 64) - 1)
            if not low <= value <= high:
                raise ValueError(f"{what}: {value} is out of range")
            metric.long_value = value & 0xFFFFFFFFFFFFFFFF
    elif datatype in (9, 10):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{what} takes a number")
        if datatype == 9:
            metric.float_value = value
        else:
            metric.double_value = value
    elif datatype == BOOLEAN:
        if not isinstance(value, bool):
            raise ValueError(f"{what} takes true or false")
        metric.boolean_value = value
    elif datatype in (12, 14, 15):
        if not isinstance(value, str):
            raise ValueError(f"{what} takes a string")
        metric.string_value = value
    elif datatype in (17, 18):
        if not isinstance(value, str):
            raise ValueError(f"{what} takes base64")
        metric.bytes_value = base64.b64decode(value)
    else:
        raise ValueError(f"{what}: commands of this datatype are not supported here")


class Check:
    """The checks of one edge node message, in the order the TCK's tests make them."""

    def __init__(self, host, topic, kind, node, device_id, payload):
        self.host = host
        self.topic = topic
        self.kind = kind
        self.node = node
        self.device_id = device_id
        self.payload = payload
        self.resolved = []  # per metric: (name or None, entry or None, datatype or None)

    def violation(self, rule, message, level="must"):
        self.host.violation(self.topic, rule, message, level)

    def lower(self):
        return self.kind.lower()

    def mqtt_flags(self, qos, retain):
        kind = self.kind
        if kind == "NDEATH":
            if qos != 1:
                self.violation("tck-id-payloads-ndeath-will-message-qos", f"NDEATH arrived with QoS {qos}, not 1")
            if retain:
                self.violation("tck-id-payloads-ndeath-will-message-retain", "NDEATH is retained")
            return
        qos_rule = "tck-id-topics-ddeath-mqtt" if kind == "DDEATH" else f"tck-id-payloads-{self.lower()}-qos"
        retain_rule = "tck-id-topics-ddeath-mqtt" if kind == "DDEATH" else f"tck-id-payloads-{self.lower()}-retain"
        if qos != 0:
            self.violation(qos_rule, f"{kind} arrived with QoS {qos}, not 0")
        if retain:
            self.violation(retain_rule, f"{kind} is retained")

    def run(self):
        getattr(self, self.kind.lower())()

    # --- common parts ---

    def payload_timestamp(self):
        if not self.payload.HasField("timestamp"):
            self.violation(f"tck-id-payloads-{self.lower()}-timestamp", f"{self.kind} has no payload timestamp")

    def seq(self, first=False):
        p, node, kind = self.payload, self.node, self.kind
        if not p.HasField("seq"):
            self.violation(f"tck-id-payloads-{self.lower()}-seq", f"{kind} has no seq")
            return
        seq = p.seq
        if first:
            if seq != 0:
                self.violation("tck-id-topics-nbirth-seq-num", f"NBIRTH seq is {seq}, not 0")
        elif node.born and node.seq is not None:
            expected = (node.seq + 1) % 256
            if seq != expected:
                self.violation(f"tck-id-payloads-{self.lower()}-seq-inc", f"{kind} seq is {seq}, expected {expected} after {node.seq}")
        if seq > 255:
            self.violation(f"tck-id-payloads-{self.lower()}-seq-inc", f"{kind} seq {seq} is beyond 255")
        node.seq = seq  # resynchronised: one gap is one violation

    def properties(self, name, properties, birth):
        if len(properties.keys) != len(properties.values):
            self.violation(
                "tck-id-payloads-propertyset-keys-array-size",
                f"{name}: {len(properties.keys)} property keys, {len(properties.values)} values",
            )
        result = {}
        for key, value in zip(properties.keys, properties.values):
            if not value.HasField("type"):
                if birth:
                    self.violation("tck-id-payloads-metric-propertyvalue-type-req", f"{name}: property {key} has no type")
                result[key] = {"type": None, "value": None, "isNull": value.is_null}
                continue
            entry = {"type": value.type, "isNull": value.is_null, "value": None}
            field, raw = raw_value(value)
            if field == "propertyset_value":
                entry["value"] = self.properties(f"{name}.{key}", raw, birth)
            elif field == "propertysets_value":
                entry["value"] = [self.properties(f"{name}.{key}[{i}]", s, birth) for i, s in enumerate(raw.propertyset)]
            elif field is not None:
                try:
                    entry["value"] = scalar_value(value.type, field, raw)
                except ValueProblem as problem:
                    self.violation(problem.rule, f"{name}: property {key}: {problem}")
            if key == "Quality":
                if value.type != 3:
                    self.violation("tck-id-payloads-propertyset-quality-value-type", f"{name}: Quality has type {value.type}, not 3 (Int32)")
                if field != "int_value" or raw not in QUALITY_CODES:
                    self.violation(
                        "tck-id-payloads-propertyset-quality-value-value", f"{name}: Quality is {field} {raw}, not int_value 0, 192 or 500"
                    )
            result[key] = entry
        return result

    def value_of(self, name, metric, datatype):
        try:
            return metric_value(metric, datatype)
        except ValueProblem as problem:
            self.violation(problem.rule, f"{name}: {problem}")
            return None

    def entry(self, name, metric, datatype, alias, birth):
        properties = self.properties(name, metric.properties, birth) if metric.HasField("properties") else {}
        quality = properties.get("Quality", {}).get("value") if "Quality" in properties else None
        return {
            "alias": json_number(alias) if alias is not None else None,
            "datatype": datatype,
            "value": None if metric.is_null else self.value_of(name, metric, datatype),
            "isNull": metric.is_null,
            "timestamp": json_number(metric.timestamp) if metric.HasField("timestamp") else None,
            "quality": quality,
            "properties": properties,
            "stale": False,
        }

    def chronological(self, scope):
        last = None
        for metric in self.payload.metrics:
            if metric.is_historical or not metric.HasField("timestamp"):
                continue
            if last is not None and metric.timestamp < last:
                self.violation(
                    f"tck-id-operational-behavior-data-publish-{scope}-order",
                    f"{self.kind}: non-historical metric timestamps go back from {last} to {metric.timestamp}",
                )
                return
            last = metric.timestamp

    # --- births ---

    def birth_metrics(self, owner, scope):
        """Checks a birth's metrics and makes them the owner's (node or device) metric set."""
        node = self.node
        owner.metrics = {}
        owner.aliases = {}
        for index, metric in enumerate(self.payload.metrics):
            alias = metric.alias if metric.HasField("alias") else None
            name = metric.name if metric.HasField("name") else None
            label = name if name is not None else f"metric #{index}"
            if name is None:
                rule = "tck-id-payloads-alias-birth-requirement" if alias is not None else "tck-id-payloads-name-requirement"
                self.violation(rule, f"{self.kind} {label} has no name")
            if not metric.HasField("timestamp"):
                self.violation("tck-id-payloads-name-birth-data-requirement", f"{self.kind} {label} has no timestamp")
            datatype = metric.datatype if metric.HasField("datatype") else None
            if datatype is None:
                self.violation("tck-id-payloads-metric-datatype-req", f"{self.kind} {label} has no datatype")
            elif datatype not in DATATYPE_NAMES or datatype == 0:
                self.violation("tck-id-payloads-metric-datatype-value", f"{self.kind} {label} has datatype {datatype}")
                datatype = None
            has_value = metric.WhichOneof("value") is not None
            if metric.is_null == has_value:
                what = "is_null and a value" if has_value else "neither a value nor is_null"
                self.violation(f"tck-id-operational-behavior-data-publish-{scope}-values", f"{self.kind} {label} has {what}")
            if alias is not None:
                if alias in node.node_aliases:
                    other_device, other_name = node.node_aliases[alias]
                    where = f"device {other_device}" if other_device is not None else "the node"
                    self.violation("tck-id-payloads-alias-uniqueness", f"{self.kind} {label}: alias {alias} is already {other_name} of {where}")
                else:
                    node.node_aliases[alias] = (self.device_id, name)
                owner.aliases[alias] = name
            self.resolved.append((name, datatype))
            if name is not None:
                owner.metrics[name] = self.entry(label, metric, datatype, alias, True)
        self.chronological(scope)

    def nbirth(self):
        node, p = self.node, self.payload
        self.payload_timestamp()
        # A new session (or a rebirth): every device must be born again, the alias table starts over.
        previous_bd_seq = node.bd_seq if node.online else None
        for device in node.devices.values():
            device.born = False
            device.births_in_session = 0
        node.node_aliases = {}
        node.data_seen = False
        node.born = True
        node.online = True
        node.births += 1
        self.seq(first=True)
        bd_seq = [m for m in p.metrics if m.HasField("name") and m.name == "bdSeq"]
        if not bd_seq:
            self.violation("tck-id-payloads-nbirth-bdseq", "NBIRTH has no bdSeq metric")
            node.bd_seq = None
        else:
            metric = bd_seq[0]
            if metric.datatype != INT64 or metric.WhichOneof("value") != "long_value":
                self.violation(
                    "tck-id-message-flow-edge-node-birth-publish-nbirth-payload-bdSeq",
                    f"NBIRTH bdSeq is datatype {metric.datatype} in {metric.WhichOneof('value')}, not Int64 in long_value",
                )
            node.bd_seq = getattr(metric, metric.WhichOneof("value")) if metric.WhichOneof("value") else None
            if node.rebirth_requested and previous_bd_seq is not None and node.bd_seq != previous_bd_seq:
                self.violation(
                    "tck-id-operational-behavior-data-commands-rebirth-action-3",
                    f"the NBIRTH after a rebirth request has bdSeq {node.bd_seq}, the session's was {previous_bd_seq}",
                )
        node.rebirth_requested = False
        rebirth = [m for m in p.metrics if m.HasField("name") and m.name == REBIRTH]
        if not rebirth:
            self.violation("tck-id-payloads-nbirth-rebirth-req", f"NBIRTH has no {REBIRTH} metric")
        else:
            metric = rebirth[0]
            if metric.datatype != BOOLEAN:
                self.violation("tck-id-operational-behavior-data-commands-rebirth-datatype", f"{REBIRTH} has datatype {metric.datatype}")
            if metric.WhichOneof("value") != "boolean_value" or metric.boolean_value:
                self.violation("tck-id-operational-behavior-data-commands-rebirth-value", f"{REBIRTH} is not false")
            if metric.HasField("alias"):
                self.violation("tck-id-operational-behavior-data-commands-rebirth-name-aliases", f"{REBIRTH} has alias {metric.alias}")
        self.birth_metrics(node, "nbirth")

    def dbirth(self):
        node, device = self.node, self.node.device(self.device_id)
        self.payload_timestamp()
        if not node.born:
            self.violation("tck-id-message-flow-device-birth-publish-nbirth-wait", f"DBIRTH of {self.device_id} without an NBIRTH in this session")
        else:
            self.seq()
            if node.data_seen and device.births_in_session == 0:
                self.violation("tck-id-payloads-dbirth-order", f"DBIRTH of {self.device_id} after NDATA/DDATA of this session")
        # A device born again (after DDEATH) keeps its aliases: drop its old ones from the node's table.
        for alias in device.aliases:
            if node.node_aliases.get(alias, (None,))[0] == self.device_id:
                del node.node_aliases[alias]
        device.born = True
        device.dead = False
        device.births += 1
        device.births_in_session += 1
        device.seq = self.payload.seq if self.payload.HasField("seq") else None
        self.birth_metrics(device, "dbirth")

    # --- data ---

    def data_metrics(self, owner, scope, label):
        for index, metric in enumerate(self.payload.metrics):
            alias = metric.alias if metric.HasField("alias") else None
            wire_name = metric.name if metric.HasField("name") else None
            name = wire_name
            if alias is not None:
                known = owner.aliases.get(alias, None) if alias in owner.aliases else None
                if alias not in owner.aliases:
                    self.violation(f"tck-id-operational-behavior-data-publish-{scope}", f"{self.kind}: alias {alias} is not declared in {label}'s birth")
                elif wire_name is not None and wire_name != known:
                    self.violation("plc2mqtt-alias-name-mismatch", f"{self.kind}: alias {alias} is {known}, but named {wire_name}")
                name = known if known is not None else wire_name
                if wire_name is not None:
                    self.violation("tck-id-payloads-alias-data-cmd-requirement", f"{self.kind}: {wire_name} carries its name beside alias {alias}")
            elif wire_name is None:
                self.violation("tck-id-payloads-name-requirement", f"{self.kind}: metric #{index} has neither name nor alias")
            else:
                entry = owner.metrics.get(wire_name)
                if entry is None:
                    self.violation(f"tck-id-operational-behavior-data-publish-{scope}", f"{self.kind}: {wire_name} is not declared in {label}'s birth")
                elif entry["alias"] is not None:
                    self.violation("tck-id-payloads-alias-data-cmd-requirement", f"{self.kind}: {wire_name} is sent by name, its alias is {entry['alias']}")
            entry = owner.metrics.get(name) if name is not None else None
            datatype = entry["datatype"] if entry is not None else None
            if metric.HasField("datatype"):
                self.violation("tck-id-payloads-metric-datatype-not-req", f"{self.kind}: {name} carries a datatype", level="should")
                if datatype is not None and metric.datatype != datatype:
                    self.violation("plc2mqtt-datatype-mismatch", f"{self.kind}: {name} sent as {metric.datatype}, born as {datatype}")
            if not metric.HasField("timestamp"):
                self.violation("tck-id-payloads-name-birth-data-requirement", f"{self.kind}: {name} has no timestamp")
            self.resolved.append((name, datatype))
            if metric.is_historical:
                owner.historical += 1  # history: reported in the event, the current value stays
            if entry is None or metric.is_historical:
                continue
            update = self.entry(name, metric, datatype, entry["alias"], False)
            if not metric.is_historical and update["value"] == entry["value"] and update["isNull"] == entry["isNull"] and not entry["stale"]:
                self.violation(
                    f"tck-id-operational-behavior-data-publish-{scope}-change",
                    f"{self.kind}: {name} resent unchanged ({json.dumps(update['value'])})",
                    level="should",
                )
            if not update["properties"]:
                update["properties"], update["quality"] = entry["properties"], entry["quality"]
            owner.metrics[name] = update
        self.chronological(scope)

    def ndata(self):
        node = self.node
        self.payload_timestamp()
        if not node.born:
            self.violation("tck-id-payloads-ndata-order", "NDATA without an NBIRTH in this session")
        else:
            self.seq()
        node.data_seen = True
        self.data_metrics(node, "nbirth", "the node")

    def ddata(self):
        node, device = self.node, self.node.device(self.device_id)
        self.payload_timestamp()
        if not node.born:
            self.violation("tck-id-payloads-ddata-order", f"DDATA of {self.device_id} without an NBIRTH in this session")
        else:
            self.seq()
            if not device.born:
                why = "after its DDEATH" if device.dead else "before its DBIRTH"
                self.violation("tck-id-payloads-ddata-order", f"DDATA of {self.device_id} {why}")
        node.data_seen = True
        device.seq = self.payload.seq if self.payload.HasField("seq") else None
        self.data_metrics(device, "dbirth", f"device {self.device_id}")

    # --- deaths ---

    def ddeath(self):
        node, device = self.node, self.node.device(self.device_id)
        self.payload_timestamp()
        if node.born:
            self.seq()
        device.born = False
        device.dead = True
        device.deaths += 1
        device.seq = self.payload.seq if self.payload.HasField("seq") else None
        for entry in device.metrics.values():
            entry["stale"] = True

    def ndeath(self):
        node, p = self.node, self.payload
        if p.HasField("seq"):
            self.violation("tck-id-payloads-ndeath-seq", f"NDEATH has seq {p.seq}")
        names = [m.name if m.HasField("name") else None for m in p.metrics]
        if names != ["bdSeq"]:
            self.violation("tck-id-topics-ndeath-payload", f"NDEATH metrics are {names}, not only bdSeq")
        bd_seq = [m for m in p.metrics if m.HasField("name") and m.name == "bdSeq"]
        value = None
        if bd_seq:
            metric = bd_seq[0]
            if metric.datatype != INT64 or metric.WhichOneof("value") != "long_value":
                self.violation(
                    "tck-id-message-flow-edge-node-birth-publish-will-message-payload-bdSeq",
                    f"NDEATH bdSeq is datatype {metric.datatype} in {metric.WhichOneof('value')}, not Int64 in long_value",
                )
            value = getattr(metric, metric.WhichOneof("value")) if metric.WhichOneof("value") else None
        if node.online and node.bd_seq is not None and value != node.bd_seq:
            # A host ignores it: the node stays online.
            self.violation("tck-id-payloads-ndeath-bdseq", f"NDEATH bdSeq {value} does not match the NBIRTH's {node.bd_seq}")
            return
        node.online = False
        node.born = False
        node.deaths += 1
        for entry in node.metrics.values():
            entry["stale"] = True
        for device in node.devices.values():
            device.born = False
            device.dead = True
            for entry in device.metrics.values():
                entry["stale"] = True

    def ncmd(self):
        pass

    def dcmd(self):
        pass

    # --- events ---

    def metric_events(self):
        """The message's metrics for the event, names and datatypes resolved through the births."""
        owner = self.node
        if self.device_id is not None:
            owner = self.node.devices.get(self.device_id)
        events = []
        for index, metric in enumerate(self.payload.metrics):
            name = metric.name if metric.HasField("name") else None
            datatype = metric.datatype if metric.HasField("datatype") else None
            if index < len(self.resolved):
                name = name if name is not None else self.resolved[index][0]
                datatype = datatype if datatype is not None else self.resolved[index][1]
            elif owner is not None and metric.HasField("alias") and name is None:
                name = owner.aliases.get(metric.alias)
            if datatype is None and owner is not None and name in owner.metrics:
                datatype = owner.metrics[name]["datatype"]
            try:
                value = None if metric.is_null else metric_value(metric, datatype)
            except ValueProblem:
                value = None
            events.append(
                {
                    "name": name,
                    "named": metric.HasField("name"),
                    "alias": json_number(metric.alias) if metric.HasField("alias") else None,
                    "datatype": datatype,
                    "typed": metric.HasField("datatype"),
                    "value": value,
                    "isNull": metric.is_null,
                    "isHistorical": metric.is_historical,
                    "isTransient": metric.is_transient,
                    "timestamp": json_number(metric.timestamp) if metric.HasField("timestamp") else None,
                    "properties": plain_properties(metric.properties) if metric.HasField("properties") else {},
                }
            )
        return events


def plain_properties(properties):
    """A PropertySet as {key: {type, value, isNull}} without checks (those ran before)."""
    result = {}
    for key, value in zip(properties.keys, properties.values):
        field, raw = raw_value(value)
        if field == "propertyset_value":
            plain = plain_properties(raw)
        elif field == "propertysets_value":
            plain = [plain_properties(s) for s in raw.propertyset]
        elif field is None:
            plain = None
        else:
            try:
                plain = scalar_value(value.type, field, raw)
            except ValueProblem:
                plain = json_number(raw) if field != "bytes_value" else None
        result[key] = {"type": value.type if value.HasField("type") else None, "value": plain, "isNull": value.is_null}
    return result


def arguments():
    parser = argparse.ArgumentParser(description="A Sparkplug B host application that checks an edge node.")
    parser.add_argument("--url", required=True, help="mqtt://host:port")
    parser.add_argument("--group", required=True, help="the Sparkplug group id")
    parser.add_argument("--node", help="the edge node commands go to by default")
    parser.add_argument("--host-id", help="act as this primary host (STATE birth and will)")
    parser.add_argument("--username")
    parser.add_argument("--password")
    parser.add_argument("--client-id")
    parser.add_argument("--ca", help="CA file for mqtts://")
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--proto", default=os.path.join(here, "sparkplug_b.proto"))
    return parser.parse_args()


def main():
    args = arguments()
    try:
        pb = load_schema(args.proto)
    except subprocess.CalledProcessError as error:
        emit("error", message=f"protoc failed: {error.stderr.decode(errors='replace')}")
        sys.exit(1)
    try:
        host = Host(args, pb)
        host.start()
    except (OSError, ValueError) as error:
        emit("error", message=f"cannot connect to {args.url}: {error}")
        sys.exit(1)
    if not host.subscribed.wait(10):
        emit("error", message=f"no subscription to {NAMESPACE}/{args.group}/# within 10 s")
        sys.exit(1)
    if args.host_id:
        # The STATE birth after the subscription ([tck-id-message-flow-phid-sparkplug-subscription]),
        # with the will's timestamp ([tck-id-host-topic-phid-birth-payload-timestamp]).
        try:
            host.publish_state(True, host.birth_timestamp)
        except RuntimeError as error:
            emit("error", message=str(error))
            sys.exit(1)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    emit("ready")
    for line in sys.stdin:
        text = line.strip()
        if not text:
            continue
        command = None
        try:
            command = json.loads(text)
            if not isinstance(command, dict):
                raise ValueError("a command is a JSON object")
            host.apply(command)
            emit("ack", id=command.get("id"))
        except Exception as error:  # noqa: BLE001 - every refusal is reported, the process goes on
            fields = {"id": command.get("id")} if isinstance(command, dict) else {}
            emit("error", message=f"{error}", **fields)
    host.shutdown()
    os._exit(0)


if __name__ == "__main__":
    main()
