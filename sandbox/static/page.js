// The sandbox page: both sides of the bridge, polled from the sandboxes' control routes
// about once a second. Plain JS, no build step. Cards are rendered by Microsoft's Adaptive
// Cards renderer (window.AdaptiveCards, npm "adaptivecards"), Markdown by markdown-it.
"use strict";

const POLL_MS = 1000;
const $ = (id) => document.getElementById(id);

const state = {
  config: null,
  conversations: [], // newest first, from the workspace's event log
  conversationId: null,
  view: null, // {conversation, messages} of the selected conversation
  team: null,
  channels: [],
  channelId: null,
  posts: [],
  writeAs: null, // aadObjectId of the Teams user we act as
  replyTo: null, // root post id when replying in a thread
  follow: null, // a conversation number whose channel to open as soon as it exists
  notices: {}, // post id -> what the bot answered a button press
};
const drawn = {}; // region -> JSON of what it shows now, to redraw only what changed

// ------------------------------------------------------------------ talking to the sandboxes

async function call(base, path, body) {
  const init = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  };
  const response = await fetch(base + path, init);
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!response.ok) {
    const error = data && data.error;
    const message = typeof error === "string" ? error : (error && error.message) || text;
    throw new Error(`${response.status}: ${message}`);
  }
  return data;
}

const neeto = (path, body) => call(state.config.neetochat, path, body);
const teams = (path, body) => call(state.config.teams, path, body);
const enc = encodeURIComponent;
const channelPath = () => `/teams/${enc(state.team.id)}/channels/${enc(state.channelId)}`;

// ------------------------------------------------------------------ small helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function changed(region, value) {
  const json = JSON.stringify(value);
  if (drawn[region] === json) return false;
  drawn[region] = json;
  return true;
}

function time(value) {
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return isNaN(date) ? "" : date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function setStatus(text, bad = false) {
  $("status").textContent = text;
  $("status").classList.toggle("bad", bad);
}

function problem(text) {
  $("problem").hidden = !text;
  $("problem").textContent = text || "";
}

function keepAtBottom(container, draw) {
  const atBottom = container.scrollHeight - container.scrollTop - container.clientHeight < 40;
  draw();
  if (atBottom) container.scrollTop = container.scrollHeight;
}

// Post texts are HTML. The bridge escapes what it puts in them, but the page still never
// assigns innerHTML: it parses into an inert document and copies an allowlist over.
const ALLOWED_TAGS = new Set(["b", "strong", "i", "em", "a", "br", "p"]);
const DROPPED_TAGS = new Set(["script", "style", "template", "iframe", "object", "embed", "svg", "math"]);

function sanitized(markup) {
  const parsed = new DOMParser().parseFromString(markup, "text/html");
  const out = document.createDocumentFragment();
  copySafe(parsed.body, out);
  return out;
}

function copySafe(from, to) {
  for (const node of from.childNodes) {
    if (node.nodeType === Node.TEXT_NODE) {
      to.append(node.data);
    } else if (node.nodeType === Node.ELEMENT_NODE) {
      const tag = node.tagName.toLowerCase();
      if (DROPPED_TAGS.has(tag)) continue;
      if (!ALLOWED_TAGS.has(tag)) {
        copySafe(node, to); // unknown markup (e.g. <at>): keep its text only
        continue;
      }
      const copy = document.createElement(tag);
      const href = tag === "a" ? node.getAttribute("href") || "" : "";
      if (/^(https?:|mailto:)/i.test(href)) {
        copy.href = href;
        copy.target = "_blank";
        copy.rel = "noopener noreferrer";
      }
      copySafe(node, copy);
      to.append(copy);
    }
  }
}

// ------------------------------------------------------------------ neetoChat: the visitor's side

async function refreshNeetoChat() {
  const { events } = await neeto("/events");
  const byId = new Map();
  for (const event of events) {
    const conversation = event.data && event.data.conversation;
    if (conversation) byId.set(conversation.id, conversation); // the latest snapshot wins
  }
  state.conversations = [...byId.values()].sort((a, b) => b.number - a.number);
  if (!state.conversationId && state.conversations.length) selectConversation(state.conversations[0].id, false);
  state.view = state.conversationId ? await neeto(`/conversations/${enc(state.conversationId)}`) : null;
  drawConversations();
  drawWidget();
}

function selectConversation(id, followChannel = true) {
  state.conversationId = id;
  const conversation = state.conversations.find((c) => c.id === id);
  if (followChannel && conversation) state.follow = conversation.number;
  drawConversations();
  refreshSoon();
}

function drawConversations() {
  const rows = state.conversations.map((c) => [c.id, c.number, c.visitor.name || c.visitor.email, c.status]);
  if (!changed("conversations", [rows, state.conversationId])) return;
  const list = $("conversations");
  list.replaceChildren(...state.conversations.map((c) =>
    el("li", {},
      el("button", {
        type: "button",
        class: `conversation${c.id === state.conversationId ? " selected" : ""}`,
        "data-id": c.id,
        onclick: () => selectConversation(c.id),
      },
        el("span", { class: "number" }, `#${c.number}`),
        el("span", { class: "who" }, c.visitor.name || c.visitor.email || "Visitor"),
        el("span", { class: `pill ${c.status}` }, c.status)))));
  if (!state.conversations.length) list.append(el("li", { class: "empty" }, "No conversations yet"));
}

function drawWidget() {
  const view = state.view;
  // What the widget shows: visitor and agent messages; internal notes never reach it.
  const messages = view ? view.messages.filter((m) => !m.internal) : [];
  if (!changed("widget", [view && view.conversation, messages])) return;
  const input = $("visitor-input");
  input.disabled = $("visitor-form").querySelector("button").disabled = !view || view.conversation.status === "closed";
  if (!view) {
    $("widget-head").textContent = "Pick or start a conversation";
    $("widget-messages").replaceChildren();
    return;
  }
  const { conversation } = view;
  const visitor = conversation.visitor.name || conversation.visitor.email || "Visitor";
  $("widget-head").replaceChildren(
    el("strong", {}, `Chat with ${state.config.workspace}`),
    el("span", { class: "muted" }, ` · #${conversation.number} · ${visitor}`),
    el("span", { class: `pill ${conversation.status}` }, conversation.status));
  input.placeholder = conversation.status === "closed" ? "This conversation is closed" : `Write as ${visitor} (visitor)…`;
  keepAtBottom($("widget-messages"), () => {
    $("widget-messages").replaceChildren(...messages.map((m) => {
      const mine = m.sender.type === "visitor";
      const name = mine ? "You" : m.sender.name || (m.sender.type === "agent" ? "Agent" : "neetoChat");
      return el("div", { class: `message ${mine ? "visitor" : m.sender.type}`, "data-sender": m.sender.type },
        el("div", { class: "meta" }, `${name} · ${time(m.created_at)}`),
        m.body ? el("div", { class: "bubble" }, m.body) : null,
        ...(m.attachments || []).map((a) =>
          el("a", { class: "file", href: a.url, target: "_blank", rel: "noopener noreferrer" },
            `📎 ${a.filename} (${a.content_type}${a.size ? `, ${Math.ceil(a.size / 1024)} KB` : ""})`)));
    }));
  });
}

async function startConversation(event) {
  event.preventDefault();
  const form = event.target;
  const data = Object.fromEntries(new FormData(form));
  await act(async () => {
    const conversation = await neeto("/conversations", {
      visitor_name: data.visitor_name || null,
      visitor_email: data.visitor_email || null,
      message: data.message,
    });
    state.conversationId = conversation.id;
    state.follow = conversation.number;
  });
}

async function visitorWrites(event) {
  event.preventDefault();
  const input = $("visitor-input");
  const body = input.value.trim();
  if (!body || !state.conversationId) return;
  await act(async () => {
    await neeto(`/conversations/${enc(state.conversationId)}/visitor_messages`, { body });
    input.value = "";
  });
}

// ------------------------------------------------------------------ Microsoft Teams: the team's side

async function refreshTeams() {
  const { teams: all } = await teams("/teams");
  state.team = all[0] || null;
  if (!state.team) return;
  drawPeople();
  const { channels } = await teams(`/teams/${enc(state.team.id)}/channels`);
  state.channels = channels;
  if (state.follow !== null) {
    const wanted = channels.find((c) => c.displayName.startsWith(`${state.follow} `));
    if (wanted) {
      state.follow = null;
      openChannel(wanted.id, false);
    }
  }
  if (!channels.some((c) => c.id === state.channelId)) openChannel(state.team.id, false); // General
  drawChannels();
  state.posts = (await teams(`${channelPath()}/posts`)).posts;
  drawPosts();
}

function drawPeople() {
  const members = state.team.members;
  $("team-name").textContent = `team ${state.team.name}${state.team.botInstalled ? "" : " (app not installed yet)"}`;
  if (!changed("people", members.map((m) => m.aadObjectId))) return;
  if (!members.some((m) => m.aadObjectId === state.writeAs)) {
    const ada = members.find((m) => m.name === "Ada Agent");
    state.writeAs = (ada || members[0] || {}).aadObjectId || null;
  }
  $("write-as").replaceChildren(...members.map((m) =>
    el("option", { value: m.aadObjectId, selected: m.aadObjectId === state.writeAs }, m.name)));
}

function openChannel(id, refresh = true) {
  if (state.channelId !== id) state.replyTo = null;
  state.channelId = id;
  drawReplyTarget();
  if (refresh) {
    drawChannels();
    refreshSoon();
  }
}

function drawChannels() {
  const rows = state.channels.map((c) => [c.id, c.displayName]);
  if (!changed("channels", [rows, state.channelId])) return;
  $("channels").replaceChildren(...state.channels.map((c) =>
    el("li", {},
      el("button", {
        type: "button",
        class: `channel-item${c.id === state.channelId ? " selected" : ""}`,
        "data-id": c.id,
        onclick: () => {
          openChannel(c.id);
          const number = Number(c.displayName.split(" ")[0]);
          const conversation = state.conversations.find((x) => x.number === number);
          if (conversation) selectConversation(conversation.id, false);
        },
      }, `# ${c.displayName}`))));
  const channel = state.channels.find((c) => c.id === state.channelId);
  $("channel-head").textContent = channel ? channel.displayName : "";
}

function drawPosts() {
  if (!changed("posts", [state.channelId, state.posts, state.notices])) return;
  keepAtBottom($("posts"), () => {
    $("posts").replaceChildren(...state.posts.map((root) =>
      el("article", { class: "thread", "data-post-id": root.id },
        drawPost(root),
        el("div", { class: "replies" }, ...root.replies.map(drawPost)),
        el("button", { type: "button", class: "reply-button", onclick: () => replyIn(root) }, "↩ Reply"))));
    if (!state.posts.length) $("posts").append(el("p", { class: "empty" }, "No posts yet"));
  });
}

function drawPost(post) {
  const bot = post.from.kind === "bot";
  const body = el("div", { class: "post-body" });
  if (post.deleted) {
    body.append(el("em", { class: "muted" }, "This message has been deleted."));
  } else {
    if (post.text) body.append(sanitized(post.text));
    for (const attachment of post.attachments || []) body.append(drawAttachment(post, attachment));
    if (state.notices[post.id]) body.append(el("div", { class: "notice" }, state.notices[post.id]));
  }
  return el("div", { class: `post${bot ? " bot" : ""}${post.reply_to ? " reply" : ""}`, "data-post-id": post.id },
    el("div", { class: "avatar", "aria-hidden": "true" }, bot ? "n" : post.from.name.slice(0, 1)),
    el("div", { class: "post-main" },
      el("div", { class: "post-head" },
        el("span", { class: "author" }, post.from.name),
        bot ? el("span", { class: "badge" }, "Bot") : null,
        el("time", {}, time(post.created)),
        post.updated ? el("span", { class: "muted" }, "Edited") : null),
      body));
}

function drawAttachment(post, attachment) {
  if (attachment.contentType === "application/vnd.microsoft.card.adaptive") return drawCard(post, attachment);
  const label = attachment.name || attachment.contentUrl || attachment.contentType;
  if (attachment.contentUrl) {
    return el("a", { class: "file", href: attachment.contentUrl, target: "_blank", rel: "noopener noreferrer" },
      `📎 ${label}`);
  }
  return el("div", { class: "file muted" }, `[${label}]`);
}

// ------------------------------------------------------------------ Adaptive Cards

const HOST_CONFIG = {
  supportsInteractivity: true,
  fontTypes: {
    default: {
      fontFamily: "'Segoe UI', system-ui, -apple-system, sans-serif",
      fontSizes: { small: 12, default: 14, medium: 16, large: 20, extraLarge: 24 },
      fontWeights: { lighter: 300, default: 400, bolder: 600 },
    },
    monospace: {
      fontFamily: "Consolas, 'Courier New', monospace",
      fontSizes: { small: 12, default: 14, medium: 16, large: 20, extraLarge: 24 },
      fontWeights: { lighter: 300, default: 400, bolder: 600 },
    },
  },
  actions: { actionsOrientation: "horizontal", actionAlignment: "left", buttonSpacing: 8, maxActions: 6 },
};

function setUpRenderer() {
  if (!window.AdaptiveCards) return false;
  if (window.markdownit) {
    const markdown = window.markdownit({ html: false, linkify: false, breaks: true });
    AdaptiveCards.AdaptiveCard.onProcessMarkdown = (text, result) => {
      result.outputHtml = markdown.render(text);
      result.didProcess = true;
    };
  }
  return true;
}

function drawCard(post, attachment) {
  const holder = el("div", { class: "card" });
  if (!window.AdaptiveCards) {
    holder.append(el("div", { class: "problem" }, "Card not shown: the Adaptive Cards renderer is missing (run npm ci)."));
    return holder;
  }
  try {
    const content = typeof attachment.content === "string" ? JSON.parse(attachment.content) : attachment.content;
    const card = new AdaptiveCards.AdaptiveCard();
    card.hostConfig = new AdaptiveCards.HostConfig(HOST_CONFIG);
    card.onExecuteAction = (action) => cardAction(post, action);
    card.parse(content);
    holder.append(card.render());
  } catch (error) {
    holder.append(el("div", { class: "problem" }, `This card could not be rendered: ${error.message}`));
  }
  return holder;
}

async function cardAction(post, action) {
  if (action instanceof AdaptiveCards.OpenUrlAction) {
    window.open(action.url, "_blank", "noopener");
    return;
  }
  if (!(action instanceof AdaptiveCards.ExecuteAction)) return;
  const who = state.team.members.find((m) => m.aadObjectId === state.writeAs);
  await act(async () => {
    const answer = await teams(`${channelPath()}/posts/${enc(post.id)}/press`, {
      user: state.writeAs,
      verb: action.verb,
      data: action.data || {},
    });
    const body = answer.bot_body || {};
    state.notices[post.id] = body.type === "application/vnd.microsoft.activity.message"
      ? `${who.name}: ${body.value}`
      : `“${action.title}” pressed by ${who.name}` + (answer.bot_status === 200 ? "" : ` (the bot answered ${answer.bot_status})`);
  });
}

// ------------------------------------------------------------------ writing in Teams

function replyIn(root) {
  state.replyTo = root.id;
  drawReplyTarget();
  $("teams-input").focus();
}

function drawReplyTarget() {
  const root = state.replyTo && state.posts.find((p) => p.id === state.replyTo);
  $("reply-target").hidden = !root;
  $("reply-text").textContent = root ? `Replying to ${root.from.name}'s post` : "";
  $("teams-input").placeholder = root ? "Reply in the thread…" : "Start a new post (/close closes the conversation)";
}

async function teamsWrites(event) {
  event.preventDefault();
  const input = $("teams-input");
  const text = input.value.trim();
  if (!text || !state.team || !state.channelId) return;
  const path = state.replyTo ? `${channelPath()}/posts/${enc(state.replyTo)}/replies` : `${channelPath()}/posts`;
  await act(async () => {
    // Teams sends HTML; a command is sent as a person types it: "@neetoChat /close".
    await teams(path, { user: state.writeAs, text: `<p>${escapeHtml(text)}</p>`, mention_bot: text.startsWith("/") });
    input.value = "";
  });
}

// ------------------------------------------------------------------ the loop

let timer = null;

async function act(work) {
  try {
    await work();
    problem(null);
  } catch (error) {
    problem(`That did not work: ${error.message}`);
  }
  refreshSoon();
}

function refreshSoon() {
  clearTimeout(timer);
  timer = setTimeout(tick, 50);
}

async function tick() {
  clearTimeout(timer);
  try {
    await refreshNeetoChat();
    await refreshTeams();
    setStatus(`live · ${new Date().toLocaleTimeString()}`);
  } catch (error) {
    setStatus(`cannot reach the sandbox: ${error.message}`, true);
  }
  timer = setTimeout(tick, POLL_MS);
}

async function start() {
  state.config = await call("", "/sandbox/config.json");
  if (state.config.renderer_missing || !setUpRenderer()) {
    problem(`Cards cannot be shown: ${state.config.renderer_missing || "the Adaptive Cards renderer did not load"}.`);
  }
  $("new-conversation").addEventListener("submit", startConversation);
  $("visitor-form").addEventListener("submit", visitorWrites);
  $("teams-form").addEventListener("submit", teamsWrites);
  $("write-as").addEventListener("change", (event) => { state.writeAs = event.target.value; });
  $("reply-cancel").addEventListener("click", () => { state.replyTo = null; drawReplyTarget(); });
  tick();
}

start().catch((error) => setStatus(`the page could not start: ${error.message}`, true));
