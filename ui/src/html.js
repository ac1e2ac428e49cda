// htm bound to Preact: JSX-like templates without a build step for them.
// Values are always rendered as text; nothing here sets innerHTML.
import { h } from "preact";
import htm from "htm";

export const html = htm.bind(h);
