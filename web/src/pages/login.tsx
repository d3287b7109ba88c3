/**
 * Signing in: a user name and password (and a TOTP code for users with a second factor), or an
 * API token. Either way the API answers with an HttpOnly session cookie; the page keeps nothing.
 */
import { type FormEvent, useState } from 'react';
import { ApiError } from '../api/client';
import { signInWithPassword, signInWithToken } from '../api/session';

export function LoginPage({ onSignedIn }: { onSignedIn(): void }) {
  const [error, setError] = useState<string>();
  const [busy, setBusy] = useState(false);
  const [needsTotp, setNeedsTotp] = useState(false);
  const run = (action: () => Promise<void>) => (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    setBusy(true);
    setError(undefined);
    action().then(onSignedIn, (failure: unknown) => {
      if (failure instanceof ApiError && failure.code === 'AUTH_TOTP_REQUIRED') setNeedsTotp(true);
      setError(failure instanceof Error ? failure.message : String(failure));
      setBusy(false);
    });
  };
  const field = (form: HTMLFormElement, name: string) => (form.elements.namedItem(name) as HTMLInputElement).value;
  return (
    <main className="login">
      <h1>Nubis</h1>
      <form
        aria-label="Sign in with a password"
        onSubmit={(event) => {
          const form = event.currentTarget;
          run(() => signInWithPassword(field(form, 'user'), field(form, 'password'), needsTotp ? field(form, 'totp') : undefined))(event);
        }}
      >
        <label>
          User
          <input name="user" autoComplete="username" required />
        </label>
        <label>
          Password
          <input name="password" type="password" autoComplete="current-password" required />
        </label>
        {needsTotp && (
          <label>
            One-time code
            <input name="totp" inputMode="numeric" autoComplete="one-time-code" required />
          </label>
        )}
        <button type="submit" disabled={busy}>
          Sign in
        </button>
      </form>
      {error && (
        <p role="alert" className="error">
          {error}
        </p>
      )}
      <details>
        <summary>Sign in with an API token</summary>
        <form
          aria-label="Sign in with a token"
          onSubmit={(event) => {
            const form = event.currentTarget;
            run(() => signInWithToken(field(form, 'token')))(event);
          }}
        >
          <label>
            Token
            <input name="token" type="password" autoComplete="off" required />
          </label>
          <p className="hint">The token is exchanged for a session with the same limits; the page does not keep it.</p>
          <button type="submit" disabled={busy}>
            Sign in with token
          </button>
        </form>
      </details>
    </main>
  );
}
