// Sign-in with the master key, and the page shown when the admin API is
// disabled (no CONDUIT_MASTER_KEY).
import { useState } from "preact/hooks";
import { api } from "../api.js";
import { html } from "../html.js";

export function SignIn({ onDone }) {
  const [key, setKey] = useState("");
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await api("POST", "/admin/session", { master_key: key });
      setKey("");
      onDone();
    } catch (err) {
      setError(err.status === 401 ? "That is not the master key." : err.message);
    } finally {
      setBusy(false);
    }
  };
  return html`<main class="signin" id="main">
    <h1>Conduit admin</h1>
    <form onSubmit=${submit} class="card">
      <label for="master-key">Master key</label>
      <input id="master-key" type="password" autocomplete="current-password" required
        value=${key} onInput=${(e) => setKey(e.currentTarget.value)} />
      <p class="hint">The value of <code>CONDUIT_MASTER_KEY</code>. It is sent once; the session lasts 12 hours.</p>
      ${error && html`<p class="error" role="alert">${error}</p>`}
      <button type="submit" class="primary" disabled=${busy}>${busy ? "Signing in…" : "Sign in"}</button>
    </form>
  </main>`;
}

export function Disabled() {
  return html`<main class="signin" id="main">
    <h1>Conduit admin</h1>
    <div class="card" role="alert">
      <h2>The admin API is disabled</h2>
      <p>This gateway has no master key. Set <code>CONDUIT_MASTER_KEY</code> and restart it to enable the admin API and this UI:</p>
      <ul>
        <li>server: <code>CONDUIT_MASTER_KEY=… conduit serve</code></li>
        <li>Cloudflare: <code>npx wrangler secret put CONDUIT_MASTER_KEY</code></li>
        <li>AWS Lambda: the <code>ConduitMasterKey</code> parameter of <code>sam deploy</code></li>
      </ul>
    </div>
  </main>`;
}
