// Renders an Adaptive Card into #card and reports what a person sees on it.
/* global AdaptiveCards, markdownit */
"use strict";

window.renderCard = function renderCard(payload, hostConfig) {
  // Teams processes Markdown in TextBlocks and Fact titles/values; raw HTML is not rendered.
  const md = markdownit({ html: false, linkify: false });
  AdaptiveCards.AdaptiveCard.onProcessMarkdown = (text, result) => {
    result.outputHtml = md.render(text);
    result.didProcess = true;
  };
  const executed = [];
  const card = new AdaptiveCards.AdaptiveCard();
  card.hostConfig = new AdaptiveCards.HostConfig(hostConfig);
  card.onExecuteAction = (action) => {
    executed.push({
      type: action.getJsonTypeName(),
      title: action.title,
      url: action.url,
      verb: action.verb,
      data: action.data,
    });
  };
  const context = new AdaptiveCards.SerializationContext();
  card.parse(payload, context);
  const problems = [];
  for (let i = 0; i < context.eventCount; i++) {
    const event = context.getEventAt(i);
    problems.push(`${event.phase} ${event.event}: ${event.message}`);
  }
  const host = document.getElementById("card");
  host.replaceChildren(card.render());
  window.executedActions = executed;
  return {
    problems,
    text: host.innerText,
    html: host.innerHTML,
    buttons: [...host.querySelectorAll("button")].map((b) => b.innerText.trim()),
    links: [...host.querySelectorAll("a")].map((a) => ({ text: a.innerText, href: a.getAttribute("href") })),
    bold: [...host.querySelectorAll("strong, b, em, i, h1, h2, h3, h4, h5, h6, li, code")].map((e) => e.outerHTML),
  };
};
