import { run } from 'node:test';
