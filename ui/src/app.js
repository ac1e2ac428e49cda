// The Conduit admin UI: the shell, routing by the URL fragment (#/keys/ID, so
// the gateway serves one page) and the session (signed in or not).
import "uplot/dist/uPlot.min.css";
import "./app.css";
import { useCallback, useEffect, useState } from "preact/hooks";
import { render } from "preact";
import { api, get, setUnauthorizedHandler } from "./api.js";
import { html } from "./html.js";
import { Disabled, SignIn } from "./pages/signin.js";
import { Overview } from "./pages/overview.js";
import { Keys } from "./pages/keys.js";
import { KeyDetail } from "./pages/key-detail.js";
import { Requests } from "./pages/requests.js";
import { Models } from "./pages/models.js";

function parseHash() {
  const h = location.hash.replace(/^#/, "") || "/";
  const [path, qs] = h.split("?");
  return { path, params: new URLSearchParams(qs || "") };
}

function useRoute() {
  const [route, setRoute] = useState(parseHash());
  useEffect(() => {
    const on = () => setRoute(parseHash());
    window.addEventListener("hashchange", on);
    return () => window.removeEventListener("hashchange", on);
  }, []);
  return route;
}

const NAV = [
  ["/", "Overview"],
  ["/keys", "Keys"],
  ["/requests", "Requests"],
  ["/models", "Models"],
];

function Shell({ route, onSignOut, children }) {
  const current = "/" + (route.path.split("/")[1] || "");
  return html`<div class="shell">
    <a class="skip" href="#main" onClick=${(e) => { e.preventDefault(); document.getElementById("main")?.focus(); }}>Skip to content</a>
    <header class="top">
      <span class="brand">Conduit</span>
      <nav aria-label="Main">
        <ul>
          ${NAV.map(([p, label]) => html`<li><a href=${"#" + p} aria-current=${current === p ? "page" : undefined}>${label}</a></li>`)}
        </ul>
      </nav>
      <button type="button" class="link signout" onClick=${onSignOut}>Sign out</button>
    </header>
    <main id="main" tabindex="-1">${children}</main>
  </div>`;
}

function App() {
  const route = useRoute();
  const [session, setSession] = useState(null);
  const check = useCallback(() => {
    get("/admin/session").then(setSession, () => setSession({ admin_enabled: true, signed_in: false, error: true }));
  }, []);
  useEffect(() => {
    check();
    setUnauthorizedHandler(() => setSession((s) => ({ ...(s || {}), signed_in: false })));
  }, []);
  useEffect(() => {
    const h = document.querySelector("main h1");
    document.title = (h ? h.textContent + " · " : "") + "Conduit admin";
  });
  if (!session) return html`<p class="muted">Loading…</p>`;
  if (!session.admin_enabled) return html`<${Disabled} />`;
  if (!session.signed_in) return html`<${SignIn} onDone=${check} />`;
  const signOut = async () => {
    await api("DELETE", "/admin/session").catch(() => null);
    location.hash = "#/";
    setSession({ ...session, signed_in: false });
  };
  const parts = route.path.split("/").filter(Boolean);
  let page;
  if (parts.length === 0) page = html`<${Overview} />`;
  else if (parts[0] === "keys" && parts[1]) page = html`<${KeyDetail} id=${decodeURIComponent(parts[1])} key=${parts[1]} />`;
  else if (parts[0] === "keys") page = html`<${Keys} />`;
  else if (parts[0] === "requests") page = html`<${Requests} params=${route.params} />`;
  else if (parts[0] === "models") page = html`<${Models} />`;
  else page = html`<h1>Not found</h1><p><a href="#/">Overview</a></p>`;
  return html`<${Shell} route=${route} onSignOut=${signOut}>${page}<//>`;
}

render(html`<${App} />`, document.getElementById("app"));

render(html`<${App} />`, document.getElementById("app"));
