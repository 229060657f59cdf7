// DriverErrorCode is a declared union: the codes the core matches on are checked by the compiler.
// The @ts-expect-error lines are the test: were `code` a plain string again, they would be unused
// directives and the build would fail.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DriverError, type DriverErrorCode, type TagReading } from '../src/pipeline/driver.js';

describe('DriverErrorCode', () => {
  it('accepts the declared codes, Modbus exception numbers and OPC UA status names', () => {
    const codes: DriverErrorCode[] = [
      'not-connected',
      'stopped',
      'invalid-value',
      'read-only',
      'timeout',
      'bad-reply',
      'connection-lost',
      'exception-2',
      'exception-11',
      'BadNodeIdUnknown',
      'UncertainLastUsableValue',
    ];
    for (const code of codes) assert.equal(new DriverError('x', { code }).code, code);
  });

  it('refuses a typo at compile time', () => {
    // @ts-expect-error: not a DriverErrorCode
    const error = new DriverError('x', { code: 'time-out' });
    // @ts-expect-error: Modbus exceptions carry a number
    const reading: TagReading = { tag: 't', quality: 'bad', code: 'exception-two' };
    // @ts-expect-error: OPC UA codes are Bad… or Uncertain… status names
    const status: DriverErrorCode = 'GoodClamped';
    assert.ok(error && reading && status);
  });
});
