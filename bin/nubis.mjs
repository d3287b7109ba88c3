#!/usr/bin/env node
// The `nubis` command: loads the TypeScript CLI through tsx in this same process, so there is no
// build step and no second Node process (stdin raw mode for `vm console` stays ours).
import { register } from 'tsx/esm/api';

register();
await import('../src/cli/main.ts');
