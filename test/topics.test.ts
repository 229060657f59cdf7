import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { compileTopicTemplate, topicProblem } from '../src/northbound/topics.js';

describe('topic templates', () => {
  const cases: Array<[string, Record<string, string>, string]> = [
    ['plc2mqtt/{gateway}/{device}/{tag}', { gateway: 'gw', device: 'press1', tag: 'speed' }, 'plc2mqtt/gw/press1/speed'],
    ['acme/{site}/{line}/{device}/{tag}', { site: 'plant1', line: 'press-line', device: 'p1', tag: 't' }, 'acme/plant1/press-line/p1/t'],
    ['{device}-{group}', { device: 'd', group: 'fast' }, 'd-fast'],
    ['fixed/topic', {}, 'fixed/topic'],
    ['{tag}/{tag}', { tag: 'x' }, 'x/x'],
  ];
  for (const [template, variables, expected] of cases) {
    it(`${template} → ${expected}`, () => assert.equal(compileTopicTemplate(template).render(variables), expected));
  }

  it('lists its placeholders once each', () => {
    assert.deepEqual(compileTopicTemplate('{a}/{b}/{a}').placeholders, ['a', 'b']);
  });

  it('rejects malformed braces', () => {
    assert.throws(() => compileTopicTemplate('x/{device'), /malformed placeholder/);
    assert.throws(() => compileTopicTemplate('x/{1bad}'), /malformed placeholder/);
  });

  it('a missing variable is an error, not "undefined" in a topic', () => {
    assert.throws(() => compileTopicTemplate('{site}/x').render({}), /placeholder \{site\} has no value/);
  });
});

describe('publishable topics', () => {
  const cases: Array<[string, string | undefined]> = [
    ['a/b/c', undefined],
    ['a/+/c', '"a/+/c" contains an MQTT wildcard (+ or #); published topics can\'t'],
    ['a/#', '"a/#" contains an MQTT wildcard (+ or #); published topics can\'t'],
    ['$SYS/x', '"$SYS/x" starts with "$", which brokers reserve for themselves ($SYS)'],
    ['a//b', '"a//b" has an empty level ("//" or a leading/trailing "/")'],
    ['/a', '"/a" has an empty level ("//" or a leading/trailing "/")'],
    ['', 'the topic is empty'],
  ];
  for (const [topic, problem] of cases) {
    it(JSON.stringify(topic), () => assert.equal(topicProblem(topic), problem));
  }
});
