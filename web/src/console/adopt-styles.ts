/**
 * Keeps the content security policy's `style-src 'self'` while xterm.js draws: its DOM renderer
 * writes its sizes and colours into `<style>` elements it creates, which that policy blocks. This
 * copies their text into one constructed style sheet adopted by the document (constructed sheets
 * are CSSOM, which the policy does not govern), and follows every change xterm makes to them.
 */
export function adoptStyleElements(container: HTMLElement): () => void {
  const sheet = new CSSStyleSheet();
  document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
  const copy = (): void => {
    const text = Array.from(container.querySelectorAll('style'), (element) => element.textContent ?? '').join('\n');
    sheet.replaceSync(text);
  };
  const observer = new MutationObserver(copy);
  observer.observe(container, { childList: true, subtree: true, characterData: true });
  copy();
  return () => {
    observer.disconnect();
    document.adoptedStyleSheets = document.adoptedStyleSheets.filter((adopted) => adopted !== sheet);
  };
}
