// CSS imported for its side effect: esbuild bundles it into app-<hash>.css.
declare module '*.css';
