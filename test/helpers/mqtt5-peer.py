#!/usr/bin/python3
# An MQTT 5 client for the broker conformance tests, on Debian's paho-mqtt (an implementation
# that shares no code with mqtt.js or mqtt-packet). Driven by JSON lines on stdin, it reports
# JSON lines on stdout:
#   {"op":"connect","port":1883,"clientId":"x","username":"u","password":"p","cleanStart":true,
#    "sessionExpiry":0}                         -> {"ev":"connack","reasonCode":0,"sessionPresent":false,"properties":{...}}
#   {"op":"subscribe","topic":"t","qos":1,"noLocal":false,"retainAsPublished":false,
#    "retainHandling":0,"subscriptionIdentifier":7}   -> {"ev":"suback","mid":1,"reasonCodes":[1]}
#   {"op":"publish","topic":"t","payload":"text","qos":1,"retain":false,"properties":{
#    "userProperties":[["k","v"]],"contentType":"..","payloadFormatIndicator":1,
#    "responseTopic":"..","correlationData":"<hex>","messageExpiryInterval":60}}
#                                              -> {"ev":"published","mid":2}
#   {"op":"disconnect"}                         -> {"ev":"disconnected","reasonCode":0}
# Every message received: {"ev":"message","topic":..,"payload":..,"qos":..,"retain":..,"properties":{...}}
# with correlationData as hex and subscriptionIdentifiers as a list.
import json
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

lock = threading.Lock()


def emit(event):
    with lock:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()


def rc_value(code):
    return code.value if hasattr(code, "value") else int(code)


def props_out(props):
    if props is None:
        return {}
    out = {}
    names = {
        "UserProperty": "userProperties",
        "ContentType": "contentType",
        "PayloadFormatIndicator": "payloadFormatIndicator",
        "ResponseTopic": "responseTopic",
        "MessageExpiryInterval": "messageExpiryInterval",
        "SubscriptionIdentifier": "subscriptionIdentifiers",
        "SessionExpiryInterval": "sessionExpiryInterval",
        "ReceiveMaximum": "receiveMaximum",
        "TopicAliasMaximum": "topicAliasMaximum",
        "MaximumPacketSize": "maximumPacketSize",
        "SharedSubscriptionAvailable": "sharedSubscriptionAvailable",
        "SubscriptionIdentifierAvailable": "subscriptionIdentifiersAvailable",
        "ServerKeepAlive": "serverKeepAlive",
        "WillDelayInterval": "willDelayInterval",
    }
    for paho_name, name in names.items():
        if hasattr(props, paho_name):
            value = getattr(props, paho_name)
            if paho_name == "UserProperty":
                value = [list(pair) for pair in value]
            if paho_name == "SubscriptionIdentifier" and not isinstance(value, list):
                value = [value]
            out[name] = value
    if hasattr(props, "CorrelationData"):
        out["correlationData"] = bytes(props.CorrelationData).hex()
    return out


def publish_props(spec):
    props = Properties(PacketTypes.PUBLISH)
    for key, value in (spec or {}).items():
        if key == "userProperties":
            props.UserProperty = [tuple(pair) for pair in value]
        elif key == "contentType":
            props.ContentType = value
        elif key == "payloadFormatIndicator":
            props.PayloadFormatIndicator = value
        elif key == "responseTopic":
            props.ResponseTopic = value
        elif key == "correlationData":
            props.CorrelationData = bytes.fromhex(value)
        elif key == "messageExpiryInterval":
            props.MessageExpiryInterval = value
    return props


client = None


def on_connect(_client, _userdata, flags, reason, properties):
    emit({
        "ev": "connack",
        "reasonCode": rc_value(reason),
        "sessionPresent": bool(flags.get("session present", 0)),
        "properties": props_out(properties),
    })


def on_subscribe(_client, _userdata, mid, reasons, _properties):
    emit({"ev": "suback", "mid": mid, "reasonCodes": [rc_value(r) for r in reasons]})


def on_publish(_client, _userdata, mid):
    emit({"ev": "published", "mid": mid})


def on_message(_client, _userdata, msg):
    emit({
        "ev": "message",
        "topic": msg.topic,
        "payload": msg.payload.decode("utf-8", "replace"),
        "qos": msg.qos,
        "retain": bool(msg.retain),
        "properties": props_out(getattr(msg, "properties", None)),
    })


def on_disconnect(_client, _userdata, reason, _properties=None):
    emit({"ev": "disconnected", "reasonCode": rc_value(reason) if reason is not None else None})


def handle(command):
    global client
    op = command["op"]
    if op == "connect":
        client = mqtt.Client(client_id=command.get("clientId", ""), protocol=mqtt.MQTTv5)
        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_publish = on_publish
        client.on_message = on_message
        client.on_disconnect = on_disconnect
        if command.get("username"):
            client.username_pw_set(command["username"], command.get("password"))
        props = Properties(PacketTypes.CONNECT)
        if command.get("sessionExpiry"):
            props.SessionExpiryInterval = command["sessionExpiry"]
        client.connect("127.0.0.1", command["port"], keepalive=60, clean_start=command.get("cleanStart", True),
                       properties=props if not props.isEmpty() else None)
        client.loop_start()
    elif op == "subscribe":
        options = SubscribeOptions(
            qos=command.get("qos", 1),
            noLocal=command.get("noLocal", False),
            retainAsPublished=command.get("retainAsPublished", False),
            retainHandling=command.get("retainHandling", 0),
        )
        props = None
        if command.get("subscriptionIdentifier"):
            props = Properties(PacketTypes.SUBSCRIBE)
            props.SubscriptionIdentifier = command["subscriptionIdentifier"]
        result, mid = client.subscribe(command["topic"], options=options, properties=props)
        emit({"ev": "subscribing", "result": result, "mid": mid})
    elif op == "publish":
        props = publish_props(command.get("properties"))
        info = client.publish(command["topic"], command.get("payload", "").encode("utf-8"), qos=command.get("qos", 0),
                              retain=command.get("retain", False), properties=props)
        emit({"ev": "publishing", "mid": info.mid})
    elif op == "disconnect":
        client.disconnect()
        client.loop_stop()
        emit({"ev": "disconnected", "reasonCode": 0})


for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    try:
        handle(json.loads(line))
    except Exception as error:  # reported, the test decides
        emit({"ev": "error", "message": repr(error)})
