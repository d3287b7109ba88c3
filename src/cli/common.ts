/**
 * What the commands of the `nubis` CLI share: the global options, the API client they select,
 * following an operation to its end, and the parsers of repeatable and numeric options.
 */
import type { Command } from 'commander';
import { NubisError } from '../core/errors.ts';
import type { Operation } from '../wire/schemas.ts';
import { ApiClient, resolveApiTarget } from './api-client.ts';
import { ProgressView } from './output.ts';

/** The options of `nubis` itself and `--project` of the nouns that have one. */
export interface GlobalOptions {
  json?: boolean;
  data: string;
  url?: string;
  token?: string;
  /** CA certificate file the API's certificate must chain to (`--ca`). */
  ca?: string;
  project?: string;
}

/** The global options as seen from a (sub)command: its own merged with its parents'. */
export function globals(command: Command): GlobalOptions {
  return command.optsWithGlobals() as GlobalOptions;
}

/** A client of the API that the global options point at (flags, environment, then the data folder). */
export function client(command: Command): ApiClient {
  const options = globals(command);
  return new ApiClient(resolveApiTarget(options.data, options));
}

/** `?project=NAME` when --project was given, else nothing: for paths without another query. */
export function projectQuery(command: Command): string {
  const project = globals(command).project;
  return project ? `?project=${encodeURIComponent(project)}` : '';
}

/** Follows an operation with a progress bar, then fails the command if the operation failed. */
export async function runOperation(command: Command, title: string, operation: Operation): Promise<Operation> {
  const view = new ProgressView(title, !globals(command).json);
  const final = await client(command).follow(operation.id, (event) => view.update(event));
  view.done();
  if (final.status !== 'succeeded') {
    throw new NubisError(final.error?.code ?? 'OPERATION_FAILED', `${title} ${final.status}: ${final.error?.message ?? ''} (operation ${final.id})`);
  }
  return final;
}

/** Commander's way to gather a repeatable option into a list. */
export function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

/** A parser for an option that takes a whole number; `name` is the option as the user typed it. */
export function parseInteger(name: string): (value: string) => number {
  return (value: string): number => {
    if (!/^-?\d+$/.test(value)) throw new NubisError('VALIDATION_FAILED', `${name} must be a whole number, not ${value}`);
    return Number(value);
  };
}
