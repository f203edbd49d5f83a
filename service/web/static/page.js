// The check page: builds a check request from the form, submits it to this
// service's /v1 API and follows it live. Plain DOM, no library; every piece of
// data reaches the page through textContent, never as markup.
"use strict";

(function () {
  const KEY_STORE = "smtpcheck.apiKey";
  const STAGES = ["connect", "banner", "ehlo", "tls", "auth", "mail", "rcpt", "data"];
  const ENDED = new Set(["finished", "failed", "canceled"]);
  const MARKERS = { note: "===", server: "<-", client: "->", error: "***" };
  const TLS_MARKERS = { note: "===", server: "<~", client: "~>", error: "***" };
  const SEVERITY_ORDER = ["fail", "warning", "info", "pass"];
  const SEVERITY_LABEL = { fail: "FAIL", warning: "WARN", info: "INFO", pass: "PASS" };
  const PASSWORD_VARIABLE = "SMTPCHECK_AUTH_PASSWORD";
  const CALLBACK_SECRET_VARIABLE = "SMTPCHECK_CALLBACK_SECRET";
  const POLL_SECONDS = 10;
  const PROBES = ["open_relay", "starttls_required", "vrfy", "expn", "smuggling"];

  const $ = (id) => document.getElementById(id);
  let current = null; // the check on screen: {id, aborter, started}
  let pending = null; // what to do once an API key has been given
  let submitting = false; // a POST is in flight: Run check and Run again wait for it

  // -- small DOM helpers -------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function table(caption, headers, rows) {
    return el(
      "table",
      {},
      el("caption", {}, caption),
      headers ? el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))) : null,
      el(
        "tbody",
        {},
        rows.map((row) =>
          el("tr", {}, row.map((cell, i) =>
            i === 0 && !headers ? el("th", { scope: "row" }, cell) : el("td", {}, cell)))
        )
      )
    );
  }

  // -- the API ---------------------------------------------------------------

  class NeedKey extends Error {}

  class ApiError extends Error {
    constructor(status, problem) {
      super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
      this.status = status;
      this.problem = problem;
    }
  }

  function apiKey() {
    return sessionStorage.getItem(KEY_STORE) || "";
  }

  function headers(extra) {
    const sent = Object.assign({ Accept: "application/json" }, extra || {});
    const key = apiKey();
    if (key) sent.Authorization = `Bearer ${key}`;
    return sent;
  }

  async function api(method, path, body, options) {
    const init = { method, headers: headers(), signal: options && options.signal };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError(0, { title: "The service cannot be reached", detail: String(error.message || error) });
    }
    const type = response.headers.get("Content-Type") || "";
    const data = type.includes("json") ? await response.json().catch(() => null) : await response.text();
    if (response.status === 401) {
      askForKey(data && data.detail);
      throw new NeedKey("API key needed");
    }
    if (!response.ok) throw new ApiError(response.status, typeof data === "object" ? data : { detail: data });
    return { status: response.status, data, response };
  }

  // -- the API key -------------------------------------------------------------

  function askForKey(reason) {
    const section = $("key-section");
    section.hidden = false;
    const error = $("key-error");
    error.hidden = !(reason && apiKey());
    error.textContent = reason && apiKey() ? `The service said: ${reason}` : "";
    $("api-key").value = "";
    $("api-key").focus();
  }

  function setupKey() {
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("api-key").value.trim();
      if (!key) {
        $("key-error").hidden = false;
        $("key-error").textContent = "Type the API key first.";
        return;
      }
      sessionStorage.setItem(KEY_STORE, key);
      $("api-key").value = "";
      $("key-section").hidden = true;
      loadVantages().then(loadRecent);
      const next = pending;
      pending = null;
      if (next) next();
      else $("target").focus();
    });
    $("change-key").addEventListener("click", () => {
      sessionStorage.removeItem(KEY_STORE);
      askForKey();
    });
  }

  // -- vantages ------------------------------------------------------------------

  async function loadVantages() {
    let vantages;
    try {
      vantages = (await api("GET", "/v1/vantages")).data;
    } catch (error) {
      if (!(error instanceof NeedKey)) $("f-vantage-help").textContent = `Vantages could not be loaded: ${error.message}`;
      return;
    }
    const select = $("f-vantage");
    const chosen = select.value;
    select.replaceChildren();
    const names = vantages.map((v) => v.name);
    if (!names.includes("default")) names.unshift("default");
    for (const vantage of vantages) {
      const workers = vantage.workers === undefined ? "" : ` (${vantage.workers} worker${vantage.workers === 1 ? "" : "s"})`;
      select.append(el("option", { value: vantage.name }, vantage.name + workers));
    }
    if (!vantages.some((v) => v.name === "default")) select.prepend(el("option", { value: "default" }, "default"));
    select.append(el("option", { value: "all" }, "all vantages"));
    select.value = names.includes(chosen) || chosen === "all" ? chosen : "default";
    $("f-vantage-help").textContent = `${vantages.length} vantage point${vantages.length === 1 ? "" : "s"} from GET /v1/vantages.`;
  }

  // -- the form <-> a check request ---------------------------------------------------

  function value(id) {
    return $(id).value.trim();
  }

  function lines(id) {
    return $(id).value.split(/[\n,]/).map((s) => s.trim()).filter(Boolean);
  }

  function number(id) {
    const raw = value(id);
    if (raw === "") return undefined;
    const parsed = Number(raw);
    return Number.isFinite(parsed) ? parsed : raw; // the API says what is wrong with it
  }

  /** ``Name: value`` lines as message.headers; a line that is not one goes into ``problems``. */
  function headerFields(problems) {
    const found = {};
    $("f-message-headers").value.split("\n").forEach((line, i) => {
      if (!line.trim()) return;
      const colon = line.indexOf(":");
      const name = colon > 0 ? line.slice(0, colon).trim() : "";
      if (!name) problems.push(`line ${i + 1}: give it as Name: value`);
      else if (name in found) problems.push(`line ${i + 1}: ${name} is given twice`);
      else found[name] = line.slice(colon + 1).trim();
    });
    return found;
  }

  /**
   * The request the form describes, with only the fields that differ from the
   * defaults; ``problems`` (if given) collects what the form itself can tell is wrong.
   */
  function buildRequest(problems) {
    const request = {};
    const target = value("target");
    const at = target.lastIndexOf("@");
    const address = at > 0 && at < target.length - 1 ? target : null;
    let rcpt = lines("f-rcpt_to");
    request.host = address ? target.slice(at + 1) : target;
    if (address || $("f-mx").checked) request.mx = true;
    if (request.mx && $("f-mx_hosts").value !== "first") request.mx_hosts = $("f-mx_hosts").value;
    const port = number("f-port");
    if (port !== undefined && port !== 25) request.port = port;
    if ($("f-tls").value !== "auto") request.tls = $("f-tls").value;
    if ($("f-tls_verify").checked) request.tls_verify = true;
    if (value("f-tls_name")) request.tls_name = value("f-tls_name");
    if (value("f-tls_ca")) request.tls_ca = $("f-tls_ca").value.trim() + "\n";
    if (value("f-helo")) request.helo = value("f-helo");
    const username = value("f-auth-username");
    if (username) {
      request.auth = { username, password: $("f-auth-password").value };
      if ($("f-auth-mechanism").value !== "auto") request.auth.mechanism = $("f-auth-mechanism").value;
      if ($("f-auth-allow_plaintext").checked) request.auth.allow_plaintext = true;
    }
    let sender = value("f-mail_from");
    if (sender === "<>") sender = "";
    if (address && !rcpt.includes(address)) rcpt = [address, ...rcpt];
    if (value("f-mail_from") !== "") request.mail_from = sender;
    else if (rcpt.length) request.mail_from = "";
    if (rcpt.length) request.rcpt_to = rcpt;
    const headerProblems = [];
    const messageHeaders = headerFields(headerProblems);
    if (problems && headerProblems.length) problems["message.headers"] = headerProblems;
    if ($("f-data").value.trim()) request.data = $("f-data").value;
    const message = {};
    if (value("f-message-subject")) message.subject = value("f-message-subject");
    if (Object.keys(messageHeaders).length) message.headers = messageHeaders;
    if ($("f-message-body").value.trim()) message.body = $("f-message-body").value;
    if (Object.keys(message).length) request.message = message; // with data too: the API says which
    if ($("f-stop_after").value) request.stop_after = $("f-stop_after").value;
    const timeouts = {};
    for (const name of ["connect", "command", "total"]) {
      const seconds = number(`f-timeouts-${name}`);
      if (seconds !== undefined) timeouts[name] = seconds;
    }
    if (Object.keys(timeouts).length) request.timeouts = timeouts;
    if ($("f-vantage").value !== "default") request.vantage = $("f-vantage").value;
    if ($("f-ip_version").value) request.ip_version = Number($("f-ip_version").value);
    const probes = PROBES.filter((name) => $(`f-probe-${name}`).checked);
    if (probes.length) request.probes = probes;
    if ($("f-retry_temporary").checked) {
      request.retry_temporary = true;
      const retry = {};
      const attempts = number("f-retry-attempts");
      const delay = number("f-retry-delay");
      if (attempts !== undefined) retry.attempts = attempts;
      if (delay !== undefined) retry.delay = delay;
      if (Object.keys(retry).length) request.retry = retry;
    }
    if (value("f-callback-url")) request.callback = { url: value("f-callback-url"), secret: $("f-callback-secret").value };
    return request;
  }

  /** Put a stored request (as GET /v1/checks/{id} returns it) back into the form. */
  function fillForm(request) {
    if (!request) return;
    $("check-form").reset();
    $("target").value = request.host || "";
    $("f-mx").checked = Boolean(request.mx);
    $("f-mx_hosts").value = request.mx_hosts || "first";
    if (request.port && request.port !== 25) $("f-port").value = request.port;
    $("f-tls").value = request.tls || "auto";
    $("f-tls_verify").checked = Boolean(request.tls_verify);
    $("f-tls_name").value = request.tls_name || "";
    $("f-tls_ca").value = request.tls_ca || "";
    $("f-helo").value = request.helo || "";
    const auth = request.auth || {};
    $("f-auth-username").value = auth.username || "";
    $("f-auth-mechanism").value = auth.mechanism || "auto";
    $("f-auth-allow_plaintext").checked = Boolean(auth.allow_plaintext);
    $("f-mail_from").value = request.mail_from === "" ? "<>" : request.mail_from || "";
    $("f-rcpt_to").value = (request.rcpt_to || []).join("\n");
    $("f-stop_after").value = request.stop_after || "";
    for (const name of ["connect", "command", "total"]) {
      const timeouts = request.timeouts || {};
      $(`f-timeouts-${name}`).value = timeouts[name] === undefined ? "" : timeouts[name];
    }
    const vantage = request.vantage || "default";
    if (![...$("f-vantage").options].some((o) => o.value === vantage)) {
      $("f-vantage").append(el("option", { value: vantage }, vantage));
    }
    $("f-vantage").value = vantage;
    $("f-ip_version").value = request.ip_version ? String(request.ip_version) : "";
    const message = request.message || {};
    $("f-message-subject").value = message.subject || "";
    $("f-message-headers").value = Object.entries(message.headers || {}).map(([k, v]) => `${k}: ${v}`).join("\n");
    $("f-message-body").value = message.body || "";
    $("f-data").value = request.data || "";
    for (const name of PROBES) $(`f-probe-${name}`).checked = (request.probes || []).includes(name);
    $("f-retry_temporary").checked = Boolean(request.retry_temporary);
    const retry = request.retry_temporary ? request.retry || {} : {};
    $("f-retry-attempts").value = retry.attempts === undefined ? "" : retry.attempts;
    $("f-retry-delay").value = retry.delay === undefined ? "" : retry.delay;
    // The stored secret reads ****: it is typed again for another run, like the password.
    $("f-callback-url").value = (request.callback || {}).url || "";
    const advanced = ["auth", "stop_after", "timeouts", "tls_name", "tls_ca", "message", "data", "callback"];
    if (advanced.some((name) => request[name]) || (request.mail_from !== undefined && request.mail_from !== null) || request.retry_temporary || (request.probes || []).length) {
      $("advanced").open = true;
    }
  }

  /** Say what the box's text will check, as it is typed. */
  function targetHint() {
    const target = value("target");
    const at = target.lastIndexOf("@");
    const hint = $("target-hint");
    if (at > 0 && at < target.length - 1) {
      const domain = target.slice(at + 1);
      hint.textContent = `An address: checks the MX hosts of ${domain} and asks them to take mail for ${target}.`;
    } else {
      hint.textContent = "";
    }
  }

  // -- the same check as shell commands ---------------------------------------------

  function shellQuote(text) {
    const s = String(text);
    if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(s)) return s;
    return `'${s.replace(/'/g, `'\\''`)}'`;
  }

  /** Stand-ins for the secrets in a copied command, and the shell variable each comes from. */
  const SECRET_SLOTS = [
    ["\u0000password\u0000", PASSWORD_VARIABLE, (body, slot) => { if (body.auth) body.auth.password = slot; }],
    ["\u0000secret\u0000", CALLBACK_SECRET_VARIABLE, (body, slot) => { if (body.callback) body.callback.secret = slot; }],
  ];

  /** curl that POSTs this very request; the key (and any secret) come from the shell. */
  function curlCommand(request) {
    const body = JSON.parse(JSON.stringify(request));
    for (const [slot, , put] of SECRET_SLOTS) put(body, slot);
    let json = shellQuote(JSON.stringify(body));
    if (!json.startsWith("'")) json = `'${json}'`;
    // Each secret comes from the shell, its " and \ escaped for JSON (the API refuses controls).
    for (const [slot, variable] of SECRET_SLOTS) {
      const escaped = `$(printf '%s' "$${variable}" | sed 's/[\\\\"]/\\\\&/g')`;
      json = json.replace(JSON.stringify(slot), `"'"${escaped}"'"`);
    }
    return [
      "curl -sS -X POST",
      shellQuote(`${location.origin}/v1/checks`),
      '-H "Authorization: Bearer $SMTPCHECK_API_KEY"',
      "-H 'Content-Type: application/json'",
      `--data-raw ${json}`,
    ].join(" ");
  }

  /** The same check as `smtpcheck check` options. */
  function cliCommand(request) {
    const args = ["smtpcheck", "check", shellQuote(request.host)];
    const add = (...parts) => args.push(...parts.map(shellQuote));
    if (request.mx) add("--mx");
    if (request.mx_hosts) add("--mx-hosts", request.mx_hosts);
    if (request.port) add("--port", request.port);
    if (request.tls) add("--tls", request.tls);
    if (request.tls_verify) add("--tls-verify");
    if (request.tls_name) add("--tls-name", request.tls_name);
    if (request.tls_ca) args.push("--tls-ca", fileOf(request.tls_ca));
    if (request.helo) add("--helo", request.helo);
    if (request.auth) {
      add("--auth-user", request.auth.username);
      if (request.auth.mechanism) add("--auth-mechanism", request.auth.mechanism);
      if (request.auth.allow_plaintext) add("--auth-allow-plaintext");
    }
    if (request.mail_from !== undefined) args.push("--from", request.mail_from === "" ? "''" : shellQuote(request.mail_from));
    for (const rcpt of request.rcpt_to || []) add("--to", rcpt);
    if (request.data !== undefined) args.push("--data-file", fileOf(request.data));
    const message = request.message || {};
    if (message.subject !== undefined) add("--subject", message.subject);
    for (const [name, text] of Object.entries(message.headers || {})) add("--header", `${name}: ${text}`);
    if (message.body !== undefined) add("--body", message.body);
    for (const probe of request.probes || []) add("--probe", probe);
    if (request.retry_temporary) add("--retry-temporary");
    const retry = request.retry || {};
    if (retry.attempts !== undefined) add("--retry-attempts", retry.attempts);
    if (retry.delay !== undefined) add("--retry-delay", retry.delay);
    if (request.callback) add("--callback-url", request.callback.url); // its secret: $SMTPCHECK_CALLBACK_SECRET
    if (request.stop_after) add("--stop-after", request.stop_after);
    const timeouts = request.timeouts || {};
    if (timeouts.connect !== undefined) add("--connect-timeout", timeouts.connect);
    if (timeouts.command !== undefined) add("--command-timeout", timeouts.command);
    if (timeouts.total !== undefined) add("--timeout", timeouts.total);
    if (request.ip_version) add("--ip-version", request.ip_version);
    if (request.vantage) add("--vantage", request.vantage);
    add("--url", location.origin);
    return args.join(" ");
  }

  /** A file argument that holds ``text`` exactly: bash's process substitution, no temporary file. */
  function fileOf(text) {
    const quoted = shellQuote(text);
    return `<(printf %s ${quoted.startsWith("'") ? quoted : `'${quoted}'`})`;
  }

  function showCommand(id, text) {
    const area = $(id);
    area.value = text;
    area.rows = Math.min(8, Math.ceil(text.length / 100) + 1);
  }

  function showCommands(request) {
    showCommand("curl-command", curlCommand(request));
    showCommand("cli-command", cliCommand(request));
    const notes = [];
    if (request.auth) notes.push(`Both read the AUTH password from $${PASSWORD_VARIABLE} (smtpcheck check asks for it where that is not set).`);
    if (request.callback) notes.push(`Both read the webhook secret from $${CALLBACK_SECRET_VARIABLE}.`);
    if (request.tls_ca || request.data !== undefined) notes.push("smtpcheck check reads the CA certificates or the message from <(printf ...), as bash and zsh allow.");
    const note = $("cli-note");
    note.hidden = !notes.length;
    note.textContent = notes.join(" ");
  }

  async function copy(id) {
    const area = $(id);
    let done = false;
    if (navigator.clipboard && window.isSecureContext) {
      done = await navigator.clipboard.writeText(area.value).then(() => true, () => false);
    }
    if (!done) {
      area.focus();
      area.select();
      done = document.execCommand && document.execCommand("copy");
    }
    $("copied").textContent = done ? "Copied." : "Select the command below and copy it.";
    setTimeout(() => { $("copied").textContent = ""; }, 4000);
  }

  // -- errors ------------------------------------------------------------------

  // A nested field with no sub-field named: the control its errors go beside.
  const FIRST_OF = { auth: "f-auth-username", message: "f-message-subject", retry: "f-retry-attempts", callback: "f-callback-url", timeouts: "f-timeouts-total" };

  function fieldFor(path) {
    const [head, sub] = path.split(".");
    if (head === "host") return "target";
    if (head in FIRST_OF) return sub && $(`f-${head}-${sub}`) ? `f-${head}-${sub}` : FIRST_OF[head];
    return `f-${head}`;
  }

  function clearProblems() {
    const box = $("problem");
    box.hidden = true;
    box.replaceChildren();
    for (const node of document.querySelectorAll(".field-error")) {
      node.hidden = true;
      node.textContent = "";
    }
    for (const node of document.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
  }

  function showProblem(error, heading) {
    const problem = error.problem || { detail: error.message };
    const box = $("problem");
    const parts = [el("h3", {}, heading || problem.title || "The request failed")];
    if (problem.status || error.status) parts.push(el("p", { class: "small" }, `HTTP ${problem.status || error.status}${problem.title && heading ? ` ${problem.title}` : ""}`));
    if (problem.detail) parts.push(el("p", {}, problem.detail));
    const errors = problem.errors || {};
    const items = [];
    for (const [path, messages] of Object.entries(errors)) {
      const text = messages.join("; ");
      items.push(el("li", {}, el("code", {}, path === "_schema" ? "request" : path), ": ", text));
      const id = fieldFor(path);
      const input = $(id);
      const slot = $(`${id}-error`);
      if (input && slot) {
        input.setAttribute("aria-invalid", "true");
        slot.hidden = false;
        slot.textContent = slot.textContent ? `${slot.textContent}; ${text}` : text;
        if (input.closest("details")) input.closest("details").open = true;
      }
    }
    if (items.length) parts.push(el("ul", { class: "errors" }, items));
    box.replaceChildren(...parts);
    box.hidden = false;
    box.focus();
  }

  // -- running a check --------------------------------------------------------------

  /** Run check and Run again say no while a submission is in flight: one click, one check. */
  function setSubmitting(busy) {
    submitting = busy;
    for (const id of ["run", "again"]) $(id).disabled = busy;
    $("check-form").setAttribute("aria-busy", busy ? "true" : "false");
  }

  async function submit() {
    if (submitting) return; // Enter in a field while the POST is out: not a second check
    clearProblems();
    if (!value("target")) {
      showProblem({ problem: { title: "Nothing to check", errors: { host: ["type a host, a mail domain or an address"] } } });
      $("target").focus();
      return;
    }
    const problems = {};
    const request = buildRequest(problems);
    if (Object.keys(problems).length) {
      showProblem({ problem: { title: "The form needs a correction", errors: problems } });
      return;
    }
    setSubmitting(true);
    try {
      const created = (await api("POST", "/v1/checks", request)).data;
      showCommands(request);
      history.pushState(null, "", `#${created.id}`);
      await openCheck(created.id, { request, fresh: true });
    } catch (error) {
      if (error instanceof NeedKey) pending = submit;
      else showProblem(error, "The check was not accepted");
    } finally {
      setSubmitting(false);
    }
  }

  function stopFollowing() {
    if (current && current.aborter) current.aborter.abort();
    if (current && current.timer) clearInterval(current.timer);
    current = null;
  }

  /** Show check ``id``: its status, then live lines, then the verdict. */
  async function openCheck(id, options) {
    stopFollowing();
    const me = { id, aborter: new AbortController(), started: Date.now(), request: options && options.request };
    current = me;
    const section = $("check");
    section.hidden = false;
    $("check-title").textContent = `Check ${id}`;
    $("permalink").href = `#${id}`;
    $("verdict").replaceChildren();
    $("details").replaceChildren();
    $("transcripts").replaceChildren();
    setStatus("loading");
    let doc;
    try {
      doc = (await api("GET", `/v1/checks/${encodeURIComponent(id)}`, undefined, { signal: me.aborter.signal })).data;
    } catch (error) {
      if (error instanceof NeedKey) pending = () => openCheck(id, options);
      else if (error.name !== "AbortError") showProblem(error, `Check ${id} cannot be shown`);
      if (current === me) section.hidden = true;
      return;
    }
    if (current !== me) return;
    if (!(options && options.fresh)) {
      fillForm(doc.request);
      showCommands(buildRequest());
    }
    me.timer = setInterval(() => { if (current === me && !me.ended) setStatus(me.status || "queued"); }, 1000);
    try {
      if (doc.vantages) await followFanOut(me, doc);
      else await followOne(me, doc, pane(null));
    } catch (error) {
      if (current !== me || error.name === "AbortError") return;
      if (error instanceof NeedKey) pending = () => openCheck(id, options);
      else showProblem(error, `Following check ${id} failed; its permalink shows it again`);
    }
  }

  function setStatus(status) {
    const running = !ENDED.has(status) && status !== "loading";
    if (!current || current.status !== status) {
      $("status").textContent = status; // announced: only when it changes
      $("status").className = `status status-${status}`;
    }
    if (current) current.status = status;
    const seconds = current ? Math.round((Date.now() - current.started) / 1000) : 0;
    $("elapsed").textContent = running ? `${seconds} s` : "";
    $("cancel").hidden = !running;
    $("cancel").disabled = Boolean(current && current.canceling);
  }

  function pane(vantage) {
    const log = el("div", {
      class: "transcript",
      role: "log",
      "aria-live": "polite",
      "aria-label": vantage ? `Transcript from vantage ${vantage}` : "Transcript",
      tabindex: "0",
    });
    const state = el("span", { class: "pane-status" });
    const wrap = el("div", { class: "pane" }, vantage ? el("h4", {}, `Vantage ${vantage} `, state) : null, log);
    $("transcripts").append(wrap);
    return { log, count: 0, state };
  }

  /** A vantage's own status, beside its name (in words, like the check's). */
  function paneStatus(into, status) {
    if (!into || !status) return;
    into.state.textContent = status;
    into.state.className = `pane-status status status-${status}`;
  }

  function addLine(into, line) {
    const markers = line.tls ? TLS_MARKERS : MARKERS;
    const marker = markers[line.dir] || "   ";
    const t = Number(line.t_ms || 0).toFixed(1).padStart(9, " ");
    const texts = String(line.text === undefined ? "" : line.text).split("\n");
    texts.forEach((text, i) => {
      into.log.append(
        el(
          "div",
          { class: `line dir-${line.dir || "note"}${line.tls ? " tls" : ""}` },
          el("span", { class: "t" }, i === 0 ? `${t}ms` : " ".repeat(11)),
          " ",
          el("span", { class: "m" }, i === 0 ? marker : "   "),
          " ",
          el("span", { class: "x" }, text)
        )
      );
    });
    into.count += 1;
    into.log.scrollTop = into.log.scrollHeight;
  }

  /** The whole transcript of an ended check, read from the top. */
  function showTranscript(into, entries) {
    into.log.replaceChildren();
    into.count = 0;
    for (const line of entries || []) addLine(into, line);
    if (!into.count) into.log.append(el("p", { class: "help" }, "No transcript."));
    into.log.scrollTop = 0;
  }

  async function followOne(me, doc, into) {
    if (!ENDED.has(doc.status)) {
      setStatus(doc.status);
      doc = await watch(me, doc, into);
      if (!doc || current !== me) return;
    }
    me.ended = true;
    showEnded(doc, into);
  }

  /** Live lines from /events where the service has it; long polls where not. */
  async function watch(me, doc, into) {
    const follower = { lastEventId: "", paneFor: () => into, onStatus: (said) => setStatus(said.status || "running") };
    const streamed = await stream(me, doc.id, follower);
    if (current !== me) return null;
    if (streamed === "ended") {
      return (await api("GET", `/v1/checks/${encodeURIComponent(doc.id)}`, undefined, { signal: me.aborter.signal })).data;
    }
    return poll(me, doc.id);
  }

  async function poll(me, id) {
    for (;;) {
      const doc = (await api("GET", `/v1/checks/${encodeURIComponent(id)}?wait=${POLL_SECONDS}`, undefined, { signal: me.aborter.signal })).data;
      if (current !== me) return null;
      setStatus(doc.status);
      if (ENDED.has(doc.status)) return doc;
    }
  }

  /**
   * Read /v1/checks/{id}/events with fetch (EventSource cannot send the
   * Authorization header) and parse the event stream here. The service ends
   * a held stream after a while; it is resumed with Last-Event-ID. Returns
   * "ended" after the final result event, "unsupported" when the service has
   * no event stream for this check, "broken" after repeated failures.
   */
  async function stream(me, id, follower) {
    let failures = 0;
    while (current === me && failures < 5) {
      let response;
      try {
        const sent = headers({ Accept: "text/event-stream" });
        if (follower.lastEventId) sent["Last-Event-ID"] = follower.lastEventId;
        response = await fetch(`/v1/checks/${encodeURIComponent(id)}/events`, { headers: sent, signal: me.aborter.signal });
      } catch (error) {
        if (error.name === "AbortError") return "aborted";
        failures += 1;
        await sleep(500 * failures);
        continue;
      }
      if ([404, 405, 406, 409].includes(response.status)) return "unsupported";
      if (!response.ok || !(response.headers.get("Content-Type") || "").startsWith("text/event-stream")) {
        failures += 1;
        await sleep(500 * failures);
        continue;
      }
      let ended = false;
      let events = 0;
      try {
        ended = await readEvents(response, (event) => {
          events += 1;
          if (event.id) follower.lastEventId = event.id;
          let data = null;
          try { data = event.data ? JSON.parse(event.data) : null; } catch (_) { data = event.data; }
          if (event.type === "line" && data) {
            const into = follower.paneFor(data);
            if (!into) return false;
            if (into.count === 0) into.log.replaceChildren();
            addLine(into, data);
          } else if (event.type === "status" && data) {
            follower.onStatus(typeof data === "string" ? { status: data } : data);
          } else if (event.type === "result") {
            return true;
          }
          return false;
        });
      } catch (error) {
        if (error.name === "AbortError") return "aborted";
      }
      if (ended) return "ended";
      // The held stream ended (its time is bounded) or broke: resume after the last id.
      failures = events ? 0 : failures + 1;
      await sleep(250 * (failures + 1));
    }
    return "broken";
  }

  /** Feed each event of an SSE body to ``handle``; true once ``handle`` says it was the last. */
  async function readEvents(response, handle) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let event = { type: "message", data: [], id: "" };
    for (;;) {
      const { value: chunk, done } = await reader.read();
      if (done) return false;
      buffer += decoder.decode(chunk, { stream: true });
      let end;
      while ((end = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const lineText = buffer.slice(0, end);
        buffer = buffer.slice(end + (buffer.startsWith("\r\n", end) ? 2 : 1));
        if (lineText === "") {
          if (event.data.length || event.type !== "message") {
            const last = handle({ type: event.type, data: event.data.join("\n"), id: event.id });
            if (last) {
              reader.cancel().catch(() => {});
              return true;
            }
          }
          event = { type: "message", data: [], id: "" };
          continue;
        }
        if (lineText.startsWith(":")) continue;
        const colon = lineText.indexOf(":");
        const field = colon < 0 ? lineText : lineText.slice(0, colon);
        let data = colon < 0 ? "" : lineText.slice(colon + 1);
        if (data.startsWith(" ")) data = data.slice(1);
        if (field === "event") event.type = data;
        else if (field === "data") event.data.push(data);
        else if (field === "id") event.id = data;
      }
    }
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  /**
   * A check run at every vantage: one pane each, filled live from the fan-out's
   * one merged event stream (each line says its vantage), then each vantage's
   * stored transcript, the verdicts side by side and the grid.
   */
  async function followFanOut(me, doc) {
    const panes = new Map();
    for (const row of doc.vantages) {
      const into = pane(row.vantage);
      panes.set(row.vantage, into);
      paneStatus(into, row.status);
      if (!row.id) into.log.append(el("p", { class: "help" }, row.error || "not run"));
    }
    if (!ENDED.has(doc.status)) {
      setStatus(doc.status);
      const follower = {
        lastEventId: "",
        paneFor: (line) => panes.get(line.vantage),
        onStatus: (said) => {
          if (said.vantage === undefined) setStatus(said.status);
          else if (panes.has(said.vantage)) paneStatus(panes.get(said.vantage), said.status);
        },
      };
      const streamed = await stream(me, doc.id, follower);
      if (current !== me) return;
      if (streamed !== "ended") await poll(me, doc.id); // a service without the merged stream
      if (current !== me) return;
    }
    const members = await Promise.all(
      doc.vantages.map(async (row) => {
        if (!row.id) return { row, doc: null };
        const member = (await api("GET", `/v1/checks/${encodeURIComponent(row.id)}`, undefined, { signal: me.aborter.signal })).data;
        const into = panes.get(row.vantage);
        paneStatus(into, member.status);
        showTranscript(into, member.result ? member.result.transcript : []);
        return { row, doc: member };
      })
    );
    if (current !== me) return;
    const overall = (await api("GET", `/v1/checks/${encodeURIComponent(doc.id)}`, undefined, { signal: me.aborter.signal })).data;
    me.ended = true;
    setStatus(overall.status);
    loadRecent();
    showVerdict(overall.result, overall);
    const details = $("details");
    details.replaceChildren(grid(members.filter((m) => m.doc).map((m) => ({ vantage: m.row.vantage, doc: m.doc }))));
    for (const m of members) {
      if (m.doc && m.doc.result) details.append(el("h3", {}, `From vantage ${m.row.vantage}`), ...resultDetails(m.doc.result));
    }
  }

  // -- the verdict and the facts ------------------------------------------------------

  function showEnded(doc, into) {
    setStatus(doc.status);
    loadRecent();
    const result = doc.result;
    if (result) showTranscript(into, result.transcript);
    else if (!into.count) into.log.append(el("p", { class: "help" }, "No transcript."));
    showVerdict(result, doc);
    const details = $("details");
    details.replaceChildren();
    if (result) {
      details.append(grid([{ vantage: doc.vantage, doc }]));
      details.append(...resultDetails(result));
    }
  }

  function showVerdict(result, doc) {
    const box = $("verdict");
    if (!result) {
      const why = doc.status === "canceled" ? "The check was canceled." : doc.error || `The check ended ${doc.status} with no result.`;
      box.replaceChildren(el("div", { class: "verdict-card fail" },
        el("p", { class: "badge" }, doc.status === "canceled" ? "CANCELED" : "ERROR"),
        el("p", { class: "summary" }, why)));
      return;
    }
    const ok = Boolean(result.ok);
    const badge = ok ? "PASS" : result.outcome === "canceled" ? "CANCELED" : "FAIL";
    box.replaceChildren(
      el("div", { class: `verdict-card ${ok ? "pass" : "fail"}` },
        el("p", { class: "badge" }, badge),
        el("div", {},
          el("p", { class: "outcome" }, el("code", {}, result.outcome || "?"),
            result.stage ? ` at stage ${result.stage}` : "",
            result.target ? ` on ${targetText(result.target)}` : ""),
          el("p", { class: "summary" }, result.summary || "")))
    );
  }

  function targetText(target) {
    let where = target.host || "?";
    if (target.address && target.address !== target.host) where += ` [${target.address}]`;
    if (target.port) where += `:${target.port}`;
    return where;
  }

  function resultDetails(result) {
    const parts = [];
    parts.push(findings(result.findings || []));
    if (result.mx) parts.push(mxTable(result));
    if (result.policy) parts.push(policyTable(result.policy));
    const hosts = result.hosts && result.hosts.length ? result.hosts : [result];
    for (const host of hosts) {
      const title = hosts.length > 1 || result.mx ? ` of ${targetText(host.target || {})}` : "";
      parts.push(facts(host, title));
      if (host.tls) parts.push(tlsFacts(host.tls, title));
      if (hosts.length > 1 && host.transcript) {
        const into = { log: el("div", { class: "transcript", role: "log", tabindex: "0", "aria-label": `Transcript${title}` }), count: 0 };
        for (const line of host.transcript) addLine(into, line);
        parts.push(el("details", { class: "host-transcript" }, el("summary", {}, `Transcript${title}`), into.log));
      }
    }
    return parts;
  }

  function findings(list) {
    const sorted = [...list].sort((a, b) => SEVERITY_ORDER.indexOf(a.severity) - SEVERITY_ORDER.indexOf(b.severity));
    const section = el("section", { class: "block", "aria-labelledby": "findings-heading" },
      el("h3", { id: "findings-heading" }, `Findings (${list.length})`));
    if (!sorted.length) section.append(el("p", { class: "help" }, "No findings."));
    else section.append(el("ul", { class: "findings" }, sorted.map((f) =>
      el("li", { class: `sev-${f.severity}` },
        el("span", { class: "sev" }, SEVERITY_LABEL[f.severity] || f.severity), " ",
        el("code", {}, f.code), " ", f.message))));
    return section;
  }

  function facts(result, title) {
    const target = result.target || {};
    const rows = [
      ["Outcome", `${result.ok ? "pass" : "fail"}: ${result.outcome} at stage ${result.stage}`],
      ["Target", targetText(target)],
      ["Checked from", target.source || "unknown"],
    ];
    if (result.vantage) rows.push(["Vantage", result.vantage]);
    if (result.banner) rows.push(["Banner", `${result.banner.code} ${result.banner.text || ""}`]);
    const ehlo = result.ehlo;
    if (ehlo && ehlo.keywords) {
      const words = Object.entries(ehlo.keywords).map(([k, v]) => (v && v.length ? `${k} ${v.join(" ")}` : k));
      rows.push([`${ehlo.command || "EHLO"} keywords`, words.join(", ") || "none"]);
      if (ehlo.before_tls && ehlo.before_tls.keywords) {
        rows.push(["Before TLS", Object.keys(ehlo.before_tls.keywords).join(", ")]);
      }
    }
    if (result.auth) rows.push(["AUTH", `${result.auth.mechanism || "?"} ${result.auth.accepted ? "accepted" : "refused"}`]);
    if (result.mail) rows.push(["MAIL FROM", `<${result.mail.from}> ${result.mail.code || ""} ${result.mail.text || ""}`]);
    for (const rcpt of result.rcpt || []) rows.push(["RCPT TO", `<${rcpt.to}> ${rcpt.code || ""} ${rcpt.text || ""}`]);
    if (result.reply && result.reply.class) rows.push(["Reply class", result.reply.class]);
    if (result.timings) {
      rows.push(["Timings", Object.entries(result.timings).filter(([, v]) => v !== null)
        .map(([k, v]) => `${k} ${Math.round(v)} ms`).join(", ")]);
    }
    return table(`Facts${title}`, null, rows);
  }

  function tlsFacts(tls, title) {
    const rows = [["Mode", tls.mode || "?"], ["Established", tls.established ? "yes" : "no"]];
    if (tls.established) {
      rows.push(["Version", tls.version || "?"], ["Cipher", `${tls.cipher || "?"}${tls.bits ? ` (${tls.bits} bits)` : ""}`]);
      rows.push(["Certificate", tls.verified ? "verified" : `NOT verified: ${tls.verify_error || "unknown reason"}`]);
    } else if (tls.offered !== undefined) {
      rows.push(["STARTTLS offered", tls.offered ? "yes" : "no"]);
    }
    const cert = tls.certificate;
    if (cert) {
      rows.push(["Subject", cert.subject || ""], ["Names (SAN)", (cert.sans || []).join(", ") || "none"],
        ["Issuer", cert.issuer || ""], ["Valid from", cert.not_before || ""], ["Valid until", cert.not_after || ""]);
      if (cert.sha256) rows.push(["SHA-256", cert.sha256]);
    }
    if (tls.sni !== undefined) rows.push(["SNI sent", tls.sni || "none"]);
    for (const problem of tls.problems || []) {
      rows.push(["Problem", typeof problem === "string" ? problem : `${problem.code || "?"}: ${problem.message || ""}`]);
    }
    return table(`TLS${title}`, null, rows);
  }

  function mxTable(result) {
    const checked = new Map((result.hosts || []).map((h) => [(h.target || {}).host, h]));
    const rows = (result.mx.hosts || []).map((host) => {
      const done = checked.get(host.host);
      return [String(host.preference), host.host + (host.implicit ? " (no MX: the domain itself)" : ""),
        done ? `${done.ok ? "pass" : "fail"}: ${done.outcome}` : "not checked"];
    });
    return table(`MX hosts of ${result.mx.domain}`, ["Preference", "Host", "Result"], rows);
  }

  /** What sending MTAs enforce for the domain: MTA-STS, TLS-RPT, DANE (as the text report says it). */
  function policyTable(policy) {
    const rows = [];
    const sts = policy.mta_sts || {};
    if (sts.policy) {
      const rules = sts.policy;
      rows.push(["MTA-STS", `mode ${rules.mode}, mx ${(rules.mx || []).join(", ") || "-"}, max_age ${rules.max_age}`]);
    } else if (sts.record) {
      rows.push(["MTA-STS", `record id ${sts.record.id}, policy ${sts.policy_error || "not fetched"}`]);
    } else {
      rows.push(["MTA-STS", sts.record_error || "none published"]);
    }
    const rpt = policy.tls_rpt || {};
    rows.push(["TLS-RPT", rpt.record ? (rpt.record.rua || []).join(", ") : rpt.error || "none published"]);
    const dane = policy.dane || {};
    const hosts = dane.hosts || [];
    if (!hosts.length) rows.push(["DANE", `${dane.error || "no MX host reached"} (DNSSEC ${dane.dnssec || "off"})`]);
    for (const host of hosts) {
      const states = {
        mismatch: "MISMATCH",
        unusable: "no usable record",
        unverified: "not verified",
        lookup_failed: "LOOKUP FAILED",
        unauthenticated: "not authenticated",
        not_applicable: "not applicable",
      };
      let state;
      if (host.status === "valid") state = `valid: TLSA ${((host.records || [])[host.matched] || {}).record || ""}`;
      else state = `${states[host.status] || host.status}: ${host.reason || "?"}`;
      rows.push([`DANE ${host.host}`, state]);
    }
    return table("Mail transport security", null, rows);
  }

  /** One cell per stage: passed, failed, not reached, or not part of this check. */
  function stageCells(result) {
    const reached = STAGES.indexOf(result.stage);
    const timings = result.timings || {};
    return STAGES.map((stage, i) => {
      let mark;
      if (i === reached) mark = result.ok ? "pass" : "fail";
      else if (i < reached) mark = stage in timings || stage === "connect" || stage === "banner" ? "pass" : "skipped";
      else mark = result.ok ? "not asked" : "not reached";
      const symbol = { pass: "\u2713 ", fail: "\u2717 " }[mark] || "";
      return el("td", { class: `cell-${mark.replace(" ", "-")}` }, symbol + mark);
    });
  }

  /** Host x vantage x stage, for one check or many. */
  function grid(members) {
    const rows = [];
    for (const { vantage, doc } of members) {
      const result = doc && doc.result;
      if (!result) {
        rows.push(el("tr", {}, el("th", { scope: "row" }, "?"), el("td", {}, vantage),
          el("td", { colspan: STAGES.length, class: "cell-fail" }, doc ? doc.error || doc.status : "no result")));
        continue;
      }
      const hosts = result.hosts && result.hosts.length ? result.hosts : [result];
      for (const host of hosts) {
        rows.push(el("tr", {}, el("th", { scope: "row" }, targetText(host.target || {})), el("td", {}, vantage), stageCells(host)));
      }
    }
    return el("table", { class: "stage-grid" },
      el("caption", {}, "Stages by host and vantage"),
      el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Host"), el("th", { scope: "col" }, "Vantage"),
        STAGES.map((s) => el("th", { scope: "col" }, s)))),
      el("tbody", {}, rows));
  }

  // -- this key's recent checks ------------------------------------------------------

  let recentLoading = null;
  let recentAgain = false;

  /** The recent checks, one read at a time; asked for meanwhile, one more read follows. */
  function loadRecent() {
    if (recentLoading) {
      recentAgain = true;
      return recentLoading;
    }
    $("recent-refresh").disabled = true;
    recentLoading = (async () => {
      do {
        recentAgain = false;
        await readRecent();
      } while (recentAgain);
    })().finally(() => {
      recentLoading = null;
      $("recent-refresh").disabled = false;
    });
    return recentLoading;
  }

  async function readRecent() {
    let items;
    try {
      items = (await api("GET", "/v1/checks?limit=10")).data.items;
    } catch (error) {
      return; // an older service without the listing, or no key yet: no panel
    }
    const list = $("recent-list");
    $("recent").hidden = false;
    if (!items.length) {
      list.replaceChildren(el("p", { class: "help" }, "None yet."));
      return;
    }
    const rows = items.map((item) => {
      const request = item.request || {};
      const result = item.result;
      const verdictText = result ? `${result.ok ? "pass" : "fail"}: ${result.outcome}` : item.status;
      const what = `${request.host || "?"}${request.port && request.port !== 25 ? `:${request.port}` : ""}${request.mx ? " (MX)" : ""}`;
      return el("tr", {},
        el("td", {}, el("a", { href: `#${item.id}` }, what)),
        el("td", {}, item.vantage || "default"),
        el("td", { class: result ? (result.ok ? "cell-pass" : "cell-fail") : "" }, verdictText),
        el("td", {}, el("time", { datetime: item.created_at || "" }, localTime(item.created_at))));
    });
    list.replaceChildren(el("table", { class: "recent-table" },
      el("caption", { class: "visually-hidden" }, "Recent checks"),
      el("thead", {}, el("tr", {}, ["Target", "Vantage", "Result", "Created"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows)));
  }

  function localTime(iso) {
    if (!iso) return "";
    const when = new Date(iso);
    return Number.isNaN(when.getTime()) ? iso : when.toLocaleString();
  }

  // -- cancel, run again, permalinks -------------------------------------------------

  async function cancel() {
    // One DELETE per check: a second one, once the check has ended canceled, would delete it.
    if (!current || current.canceling) return;
    const me = current;
    me.canceling = true;
    $("cancel").disabled = true;
    try {
      await api("DELETE", `/v1/checks/${encodeURIComponent(me.id)}`);
      if (current === me) setStatus("canceling");
    } catch (error) {
      me.canceling = false;
      if (current === me) $("cancel").disabled = false;
      if (!(error instanceof NeedKey)) showProblem(error, "The check could not be canceled");
    }
  }

  function fromLocation() {
    const id = decodeURIComponent(location.hash.slice(1));
    if (id && (!current || current.id !== id)) openCheck(id, {});
  }

  function setup() {
    $("check-form").addEventListener("submit", (event) => {
      event.preventDefault();
      submit();
    });
    $("again").addEventListener("click", () => submit());
    $("target").addEventListener("input", targetHint);
    $("cancel").addEventListener("click", () => cancel());
    $("copy-curl").addEventListener("click", () => copy("curl-command"));
    $("recent-refresh").addEventListener("click", () => loadRecent());
    $("copy-cli").addEventListener("click", () => copy("cli-command"));
    window.addEventListener("hashchange", fromLocation);
    setupKey();
    loadVantages().then(fromLocation).then(loadRecent);
  }

  document.addEventListener("DOMContentLoaded", setup);
})();
