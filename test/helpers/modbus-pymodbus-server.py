#!/usr/bin/python3
"""A small Modbus server on pymodbus 3.0 (Debian's python3-pymodbus) for the driver tests.

An implementation independent of modbus-serial, so the driver is checked against a second
reading of the specification. Modes:
  tcp           Modbus TCP (MBAP) on 127.0.0.1, ephemeral port
  rtu-over-tcp  RTU frames (with CRC) over a TCP socket, ephemeral port
  rtu           RTU on a serial device (--serial /path), e.g. one end of a socat pty pair
Prints "READY <port>" (0 for serial) once it listens. Only the unit ids in --units answer;
requests to any other unit id get no answer at all, like an absent device on a bus.
Exits when its parent dies or after --lifetime seconds, so a crashed test leaves nothing behind.
"""

import argparse
import asyncio
import logging
import os
import struct
import sys

from pymodbus.datastore import ModbusSequentialDataBlock, ModbusServerContext, ModbusSlaveContext
from pymodbus.server.async_io import ModbusSerialServer, ModbusTcpServer
from pymodbus.transaction import ModbusRtuFramer, ModbusSocketFramer


def words(fmt, value):
    """Big-endian bytes of a value as 16-bit registers (ABCD order)."""
    raw = struct.pack(">" + fmt, value)
    return [int.from_bytes(raw[i:i + 2], "big") for i in range(0, len(raw), 2)]


def holding_registers():
    regs = [0] * 50  # addresses 50 and up do not exist: exception 2
    regs[0] = 0x1234                                   # uint16 4660
    regs[1:3] = words("f", 1.5)                        # float32 ABCD
    cdab = words("i", -123456789)
    regs[3:5] = [cdab[1], cdab[0]]                     # int32 CDAB
    regs[5:9] = words("Q", 0x0102030405060708)         # uint64 ABCD
    text = b"pymodbus"
    regs[9:13] = [int.from_bytes(text[i:i + 2], "big") for i in range(0, 8, 2)]  # string, 4 registers
    regs[13] = 0b1000_0000_0000_0101                   # bits 0, 2, 15
    return regs


def context(units):
    slaves = {}
    for unit in units:
        slaves[unit] = ModbusSlaveContext(
            di=ModbusSequentialDataBlock(0, [True, False, True, True, False, False, False, True]),
            co=ModbusSequentialDataBlock(0, [True, False, True, True, False, False, False, True]),
            hr=ModbusSequentialDataBlock(0, holding_registers()),
            ir=ModbusSequentialDataBlock(0, words("f", -2.25) + [0] * 8),
            zero_mode=True,
        )
    return ModbusServerContext(slaves=slaves, single=False)


async def watchdog(lifetime):
    parent = os.getppid()
    for _ in range(int(lifetime)):
        await asyncio.sleep(1)
        if os.getppid() != parent:
            break
    os._exit(0)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["tcp", "rtu-over-tcp", "rtu"], required=True)
    parser.add_argument("--units", default="1")
    parser.add_argument("--serial")
    parser.add_argument("--lifetime", type=float, default=120)
    args = parser.parse_args()
    units = [int(u) for u in args.units.split(",")]
    logging.basicConfig(level=logging.CRITICAL, stream=sys.stderr)
    asyncio.create_task(watchdog(args.lifetime))

    if args.mode == "rtu":
        server = ModbusSerialServer(
            context(units), framer=ModbusRtuFramer, port=args.serial, baudrate=9600, ignore_missing_slaves=True
        )
        await server.start()
        print("READY 0", flush=True)
        await server.serve_forever()
        return

    framer = ModbusSocketFramer if args.mode == "tcp" else ModbusRtuFramer
    server = ModbusTcpServer(
        context(units), framer=framer, address=("127.0.0.1", 0), allow_reuse_address=True, ignore_missing_slaves=True
    )
    task = asyncio.create_task(server.serve_forever())
    await server.serving
    port = server.server.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    await task


if __name__ == "__main__":
    asyncio.run(main())
