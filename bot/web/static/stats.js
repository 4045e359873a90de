// The stats page: the count of humans prompting stays current without a reload.
"use strict";
(function () {
  const el = document.getElementById("humans");
  if (!el) return;
  async function refresh() {
    try {
      const response = await fetch("/stats/humans.json", { credentials: "same-origin" });
      if (response.ok) el.textContent = String((await response.json()).humans_prompting);
    } catch (e) { /* offline for a moment: try again next time */ }
  }
  setInterval(refresh, 3000);
})();
