/**
 * A client that keeps one TCP connection to an echo server and sends a numbered line every
 * 100 ms until it gets SIGINT; then, once the last echoes are back (or after 1.5 s), it prints
 * what it saw as JSON: lines sent and echoed, whether
 * every echo came back in order, the longest gap between two echoes, and whether the connection
 * broke. Run in a probe namespace to show that a connection survives a live migration.
 *
 *   node tcp-echo-client.mjs HOST PORT
 */
import { connect } from 'node:net';

const [host, port] = process.argv.slice(2);
const socket = connect({ host, port: Number(port) });
socket.setNoDelay(true);
let sent = 0;
let echoed = 0;
let inOrder = true;
let broken = '';
let lastEchoAt = 0;
let longestGapMs = 0;
let pending = '';
let timer;

socket.on('connect', () => {
  lastEchoAt = performance.now();
  timer = setInterval(() => socket.write(`${sent++}\n`), 100);
});
socket.on('data', (chunk) => {
  pending += chunk.toString();
  const lines = pending.split('\n');
  pending = lines.pop() ?? '';
  for (const line of lines) {
    if (Number(line) !== echoed) inOrder = false;
    echoed++;
    const now = performance.now();
    longestGapMs = Math.max(longestGapMs, now - lastEchoAt);
    lastEchoAt = now;
  }
});
socket.on('error', (error) => (broken = error.message));
socket.on('close', () => {
  broken ||= 'closed by the peer';
  finish();
});
process.on('SIGINT', () => {
  clearInterval(timer);
  const giveUpAt = performance.now() + 1500;
  const check = setInterval(() => {
    if (echoed >= sent || broken || performance.now() > giveUpAt) {
      clearInterval(check);
      finish();
    }
  }, 20);
});

function finish() {
  clearInterval(timer);
  process.stdout.write(`${JSON.stringify({ sent, echoed, inOrder, longestGapMs: Math.round(longestGapMs), broken: broken || undefined })}\n`);
  process.exit(0);
}
