// The curator page's keys and the correction editor's JSON check. No inline script:
// the Content-Security-Policy allows only this file.
"use strict";

const KEYS = {
  i: () => press("include"),
  e: () => press("exclude"),
  u: () => press("reset"),
  a: () => press("accept"),
  r: () => press("reject"),
  s: () => follow("skip"),
  j: () => follow("next-row"),
  k: () => follow("previous-row"),
  c: openEditor,
};

function press(action) {
  const button = document.querySelector(`button[data-action="${action}"]`);
  if (button && !button.disabled) button.click();
}

function follow(id) {
  const link = document.getElementById(id);
  if (link) window.location.assign(link.href);
}

function openEditor() {
  const editor = document.getElementById("editor");
  const text = document.getElementById("correction");
  if (!editor || !text) return;
  editor.open = true;
  text.focus();
}

function typing(target) {
  return target instanceof HTMLElement &&
    (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
}

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
  if (!document.getElementById("row")) return;
  const act = KEYS[event.key.toLowerCase()];
  if (!act) return;
  event.preventDefault();
  act();
});

// A JSON answer must stay JSON: refuse the save here, saying why (the server refuses too).
function checkCorrection(event) {
  const form = event.target;
  const text = document.getElementById("correction");
  const error = document.getElementById("correction-error");
  if (form.dataset.json !== "true" || !text || !error) return;
  try {
    JSON.parse(text.value);
    error.textContent = "";
  } catch (problem) {
    event.preventDefault();
    error.textContent = `not valid JSON (${problem.message}); nothing sent`;
    text.focus();
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("correction-form");
  if (form) form.addEventListener("submit", checkCorrection);
});
