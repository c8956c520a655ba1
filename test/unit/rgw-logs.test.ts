// RGW's two logs as tools/launch/ceph.ts reads them (the bench's S3 section counts requests
// and bytes written with them): beast's access lines with their User-Agent, and the ops log,
// whose records 16.2.15 sometimes writes on one line with no newline between them.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseRgwAccessLog, parseRgwOpsLog } from '../../tools/launch/ceph.js';

function op(fields: Record<string, unknown>): string {
  return JSON.stringify({
    bucket: 'b',
    time: '2026-12-01T05:42:55.115997Z',
    remote_addr: '127.0.0.1',
    user: 'rig',
    operation: 'put_obj',
    uri: 'PUT /b/k HTTP/1.1',
    http_status: '200',
    error_code: '',
    bytes_sent: 0,
    bytes_received: 0,
    object_size: 0,
    total_time: 7,
    user_agent: 'aws-sdk-go/1.44.133 (go1.19.8; linux; amd64)',
    ...fields,
  });
}

describe('RGW logs', () => {
  it('access log: method, path, status, bytes, user and User-Agent of each beast line', () => {
    const text = [
      '2026-12-01T02:50:30.860+0000 7f0a1b7fe700  1 ====== req done req=0x7f status=200 ======',
      '2026-12-01T02:50:30.860+0000 7f0a1b7fe700  1 beast: 0x7f0a1b7f5650: 127.0.0.1 - rig [01/Dec/2026:02:50:30.860 +0000] "GET /b/k?x-id=GetObject HTTP/1.1" 206 4096 - "aws-sdk-js/3.1174.0 ua/2.1 registry-mirror-bench-admin" bytes=0-4095 latency=0.003999999s',
      '2026-12-01T02:50:30.870+0000 7f0a1b7fe700  1 beast: 0x7f0a1b7f5650: 127.0.0.1 - - [01/Dec/2026:02:50:30.870 +0000] "HEAD /b HTTP/1.1" 403 0 - "-" - latency=0.0s',
    ].join('\n');
    assert.deepEqual(parseRgwAccessLog(text), [
      { user: 'rig', method: 'GET', path: '/b/k?x-id=GetObject', status: 206, bytes: 4096, userAgent: 'aws-sdk-js/3.1174.0 ua/2.1 registry-mirror-bench-admin' },
      { user: '-', method: 'HEAD', path: '/b', status: 403, bytes: 0, userAgent: '-' },
    ]);
  });

  it('ops log: one record per object, also when records share a line; a record still being written is left out', () => {
    const a = op({ uri: 'PUT /b/k?partNumber=1&uploadId=2~x?partNumber=1&uploadId=2~x HTTP/1.1', bytes_received: 5242880, object_size: 5242880 });
    // A brace and an escaped quote inside a string must not end the record.
    const b = op({ operation: 'copy_obj', uri: 'PUT /b/blobs/data HTTP/1.1', user_agent: 'odd "}{" agent' });
    const c = op({ operation: 'list_bucket', uri: 'GET /b?max-keys=1&prefix=p?max-keys=1&prefix=p HTTP/1.1', http_status: '200', bytes_sent: 345 });
    const partial = op({ operation: 'get_obj' }).slice(0, 80);
    const ops = parseRgwOpsLog(`${a}\n${b}${c}\n${partial}`);
    assert.equal(ops.length, 3);
    assert.deepEqual(ops[0], {
      operation: 'put_obj',
      method: 'PUT',
      path: '/b/k?partNumber=1&uploadId=2~x',
      status: 200,
      bytesReceived: 5242880,
      bytesSent: 0,
      objectSize: 5242880,
      user: 'rig',
      userAgent: 'aws-sdk-go/1.44.133 (go1.19.8; linux; amd64)',
    });
    assert.equal(ops[1]!.operation, 'copy_obj');
    assert.equal(ops[1]!.userAgent, 'odd "}{" agent');
    assert.equal(ops[2]!.path, '/b?max-keys=1&prefix=p');
    assert.equal(ops[2]!.bytesSent, 345);
    // The record completes: read again, it is there.
    assert.equal(parseRgwOpsLog(`${a}\n${b}${c}\n${op({ operation: 'get_obj' })}\n`).length, 4);
  });
});
