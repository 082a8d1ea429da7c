// Loaded only on the session view: the player (and its WebAssembly terminal) is the console's
// largest dependency.
import * as AsciinemaPlayer from "asciinema-player";
import "asciinema-player/dist/bundle/asciinema-player.css";

export function mountPlayer(cast: string, el: HTMLElement): void {
  AsciinemaPlayer.create({ data: cast }, el, { fit: "width", idleTimeLimit: 2, controls: true, preload: true });
}
