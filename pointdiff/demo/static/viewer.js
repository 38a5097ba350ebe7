// One interactive 3D view (three.js): a coloured point cloud or a GLB mesh, orbit and zoom with
// the mouse. Renders on demand (after a change), which keeps software WebGL cheap.
import * as THREE from "three";
import { OrbitControls } from "three/addons/controls/OrbitControls.js";
import { GLTFLoader } from "three/addons/loaders/GLTFLoader.js";

const BACKGROUND = 0xf3f4f6;

function srgbToLinear(c) {
  return c <= 0.04045 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4);
}

export class Viewer {
  constructor(canvas) {
    this.canvas = canvas;
    this.frames = 0;
    // preserveDrawingBuffer: the last frame stays readable (gallery thumbnails, tests)
    this.renderer = new THREE.WebGLRenderer({ canvas, antialias: true, preserveDrawingBuffer: true });
    this.renderer.setPixelRatio(1);
    this.renderer.setSize(canvas.width, canvas.height, false);
    this.scene = new THREE.Scene();
    this.scene.background = new THREE.Color(BACKGROUND);
    this.camera = new THREE.PerspectiveCamera(40, canvas.width / canvas.height, 0.01, 100);
    this.scene.add(new THREE.HemisphereLight(0xffffff, 0x888888, 2.0));
    const key = new THREE.DirectionalLight(0xffffff, 1.5);
    key.position.set(1, 2, 1.5);
    this.camera.add(key); // the key light follows the view: no side stays black
    this.scene.add(this.camera);
    this.controls = new OrbitControls(this.camera, canvas);
    this.controls.addEventListener("change", () => this.render());
    this.object = null;
    this.bounds = { center: new THREE.Vector3(), radius: 0.8 };
    this.home();
  }

  home() {
    // glTF's Y-up frame (the server sends Y-up data); a three-quarter view from the front,
    // far enough to see the whole object
    const { center, radius } = this.bounds;
    this.controls.target.copy(center);
    const direction = new THREE.Vector3(0.9, 0.55, 1.25).normalize();
    this.camera.position.copy(center).addScaledVector(direction, radius * 2.8);
    this.controls.update();
    this.render();
  }

  render() {
    this.renderer.render(this.scene, this.camera);
    this.frames += 1;
  }

  set(object) {
    if (this.object) {
      this.scene.remove(this.object);
      this.object.traverse((o) => {
        if (o.geometry) o.geometry.dispose();
        if (o.material) o.material.dispose();
      });
    }
    this.object = object;
    if (object) {
      this.scene.add(object);
      const sphere = new THREE.Box3().setFromObject(object).getBoundingSphere(new THREE.Sphere());
      if (sphere.radius > 0) this.bounds = { center: sphere.center, radius: sphere.radius };
    }
    this.home();
  }

  showCloud(buffer) {
    // N float32 xyz, then N sRGB bytes (pointdiff/demo/generate.py _cloud_view)
    const n = buffer.byteLength / 15;
    const xyz = new Float32Array(buffer, 0, n * 3);
    const rgb = new Uint8Array(buffer, n * 12, n * 3);
    const colors = new Float32Array(n * 3);
    for (let i = 0; i < n * 3; i++) colors[i] = srgbToLinear(rgb[i] / 255);
    const geometry = new THREE.BufferGeometry();
    geometry.setAttribute("position", new THREE.BufferAttribute(xyz.slice(), 3));
    geometry.setAttribute("color", new THREE.BufferAttribute(colors, 3));
    geometry.computeBoundingSphere();
    // about 3.5 px per point at the home distance, whatever the cloud's size
    const size = 0.045 * Math.max(geometry.boundingSphere.radius, 1e-3);
    const material = new THREE.PointsMaterial({ size, vertexColors: true });
    this.set(new THREE.Points(geometry, material));
  }

  showGLB(buffer) {
    return new Promise((resolve, reject) => {
      new GLTFLoader().parse(buffer, "", (gltf) => { this.set(gltf.scene); resolve(); }, reject);
    });
  }

  clear() {
    this.set(null);
  }

  rotate(angle) {
    // orbit the camera about the vertical axis (buttons and tests; the mouse does the same)
    const offset = this.camera.position.clone().sub(this.controls.target);
    offset.applyAxisAngle(new THREE.Vector3(0, 1, 0), angle);
    this.camera.position.copy(this.controls.target).add(offset);
    this.controls.update();
    this.render();
  }

  thumbnail(width = 160) {
    const out = document.createElement("canvas");
    out.width = width;
    out.height = Math.round((width * this.canvas.height) / this.canvas.width);
    out.getContext("2d").drawImage(this.canvas, 0, 0, out.width, out.height);
    return out.toDataURL("image/png");
  }
}
