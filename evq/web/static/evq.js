// evq web: live pages. While the tab is visible, listen to /live; when the ledger moves
// on, fetch this page again and swap in its live part (#live). A hidden tab closes the
// stream (nothing is polled), and catches up when it is shown again.
(function () {
  "use strict";
  const url = document.body.dataset.live;
  const part = document.getElementById("live");
  if (!url || !part) return;
  let source = null;
  let fetching = false;

  async function refresh() {
    if (fetching) return;
    fetching = true;
    try {
      const answer = await fetch(window.location.href, { credentials: "same-origin" });
      if (!answer.ok) return;
      const page = new DOMParser().parseFromString(await answer.text(), "text/html");
      const fresh = page.getElementById("live");
      const here = document.getElementById("live");
      if (fresh && here) here.replaceWith(fresh);
    } finally {
      fetching = false;
    }
  }

  function open() {
    if (source || document.hidden) return;
    source = new EventSource(url);
    source.addEventListener("change", refresh);
  }

  function close() {
    if (source) source.close();
    source = null;
  }

  document.addEventListener("visibilitychange", function () {
    if (document.hidden) {
      close();
    } else {
      open();
      refresh();
    }
  });
  open();
})();
