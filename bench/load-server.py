#!/usr/bin/python3
"""Load Modbus TCP server for the benchmarks: pymodbus 3.0 (Debian's python3-pymodbus), an
independent and fast implementation (modbus-serial's ServerTCP adds ~1 ms per request).
Every unit id in --units has 65536 holding registers holding their own address; with --clock,
every holding register read returns instead the server's clock when it serves the request, in ms
since the epoch mod 65536, the same for every register of one request (the subscriber's
--source-clock takes each value's latency from it).
Prints "READY <port>" once it listens; exits when its parent dies."""
import argparse
import asyncio
import logging
import os
import sys
import time

from pymodbus.datastore import ModbusSequentialDataBlock, ModbusServerContext, ModbusSlaveContext
from pymodbus.server.async_io import ModbusTcpServer
from pymodbus.transaction import ModbusSocketFramer


class ClockDataBlock(ModbusSequentialDataBlock):
    """65536 registers whose value is the time of the read: (ms since the epoch) mod 65536."""

    def __init__(self):
        super().__init__(0, [0] * 65536)

    def getValues(self, address, count=1):
        now = int(time.time() * 1000) & 0xFFFF
        return [now] * count


async def watchdog():
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(1)
    os._exit(0)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--units", default="1")
    parser.add_argument("--clock", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL, stream=sys.stderr)
    registers = [address & 0xFFFF for address in range(65536)]
    slaves = {
        int(unit): ModbusSlaveContext(
            hr=ClockDataBlock() if args.clock else ModbusSequentialDataBlock(0, registers), zero_mode=True
        )
        for unit in args.units.split(",")
    }
    server = ModbusTcpServer(
        ModbusServerContext(slaves=slaves, single=False), framer=ModbusSocketFramer,
        address=("127.0.0.1", 0), allow_reuse_address=True,
    )
    asyncio.create_task(watchdog())
    task = asyncio.create_task(server.serve_forever())
    await server.serving
    print(f"READY {server.server.sockets[0].getsockname()[1]}", flush=True)
    await task


if __name__ == "__main__":
    asyncio.run(main())
