// First run, sign up and sign in.

import { h } from "../dom.js";

function field(label, input) {
  const id = `f-${input.name}`;
  input.id = id;
  return h("div.field", {}, h("label", { for: id }, label), input);
}

function errorLine() {
  return h("p.form-error", { role: "alert", hidden: true });
}

function showError(line, error) {
  line.hidden = false;
  line.textContent = error.fields ? `${error.message} ${error.fields}` : error.message;
}

/** The account form: `mode` is "welcome" (first run), "signup" or "signin". */
export function authScreen(app, mode) {
  const signin = mode === "signin";
  const title = {
    welcome: "Welcome to Tidings",
    signup: "Create your account",
    signin: "Sign in to Tidings",
  }[mode];
  const intro = mode === "welcome"
    ? "No account exists yet. The account you create now becomes this instance's administrator."
    : null;
  const name = h("input", { name: "display_name", autocomplete: "name", required: true, maxLength: 80 });
  const email = h("input", { name: "email", type: "email", autocomplete: "email", required: true });
  const password = h("input", {
    name: "password",
    type: "password",
    autocomplete: signin ? "current-password" : "new-password",
    required: true,
    minLength: signin ? 1 : 8,
  });
  const error = errorLine();
  const submit = h("button.primary", { type: "submit" }, signin ? "Sign in" : "Create account");
  const form = h(
    "form.auth-form",
    {
      "aria-labelledby": "auth-title",
      onsubmit: async (event) => {
        event.preventDefault();
        error.hidden = true;
        submit.disabled = true;
        try {
          if (signin) await app.api.login(email.value, password.value);
          else await app.api.register(email.value, password.value, name.value);
          app.config.first_run = false;
          await app.signedIn();
        } catch (failure) {
          showError(error, failure);
          submit.disabled = false;
        }
      },
    },
    signin ? null : field("Display name", name),
    field("Email", email),
    field("Password", password),
    error,
    submit,
  );
  const other = signin
    ? (app.config.open_registration ? h("p", {}, "New here? ", app.link("/signup", "Create an account")) : null)
    : (mode === "signup" ? h("p", {}, "Have an account? ", app.link("/signin", "Sign in")) : null);
  return h(
    "main.auth",
    { id: "main" },
    h("section.card", {},
      h("h1", { id: "auth-title" }, title),
      intro && h("p.intro", {}, intro),
      form,
      other,
    ),
  );
}
